#!/usr/bin/env bash
# Run 9's last call, on the final tree with run 9's table installed (cuda_wg at M = 64 gate_up and
# M = 256): the README path (tests/cli, every format: quantize -> pack -> run on the GPU) alone, so it
# is not starved as in session9a.sh; the 8B end to end for bf16 and W4A16 (batch 1/8/32, prefill 2048,
# KV); ncu of the warpgroup-MMA kernel at gate_up M = 256 (what limits it). One tarball; < 560 s.
source benchmarks/device/lib.sh
export BUILD_S=${BUILD_S:-170}
step build; build_libs cuda_w4 cuda_w4mm cuda_w4wg
step "tests/cli"
timeout ${TESTS_S:-170} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/cli > "$OUT/gpu_tests_cli.txt" 2>&1
echo "pytest rc=$?"; grep -E "FAILED|^ERROR|passed|failed" "$OUT/gpu_tests_cli.txt" | tail -8; tail -2 "$OUT/gpu_tests_cli.txt"
step e2e; timeout ${E2E_S:-170} python3 benchmarks/bench_e2e.py --e2e --formats bf16,w4a16 --out "$OUT" \
  2>"$OUT/e2e.log" | tee "$OUT/e2e.txt" | head -24; tail -1 "$OUT/e2e.log"
SECTIONS="--section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats
  --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis"
STALLS=$(printf 'smsp__average_warps_issue_stalled_%s_per_issue_active.ratio,' long_scoreboard short_scoreboard \
  barrier mio_throttle lg_throttle wait math_pipe_throttle not_selected dispatch_stall no_instruction membar)
KEYS="stalled|Issue Slots|Duration|DRAM Throughput|L2 Cache Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|No Eligible"
step "ncu gate_up M=256"
timeout 70 ncu --clock-control none --kernel-name regex:w4_wgmma --launch-skip 3 --launch-count 1 $SECTIONS \
  --metrics ${STALLS%,} python3 benchmarks/ncu_linear.py --format w4a16 --shape gate_up --m 256 > "$OUT/ncu_wg256.txt" 2>&1
echo "rc=$?"; grep -E "$KEYS" "$OUT/ncu_wg256.txt" | head -24
tar czf /tmp/all.tgz -C "$OUT" . && find "$OUT" -mindepth 1 -delete && mv /tmp/all.tgz "$OUT/"
step done
