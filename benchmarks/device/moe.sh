#!/usr/bin/env bash
# One device call for issue 14's MoE bar: the CUDA grouped decode (csrc/moe_w4.cu) and the dense W4
# library (the loop peer) built, the GPU tests of both grouped paths, then bench_moe.py at T = 1, 16
# and 64: both paths at their defaults and swept, against the loop of dense W4 calls. Logs under
# $OUT (tests.txt, sweep.txt: every candidate's error and time, bench_moe.txt: the table). Under 400 s:
# build <= 90 s (~40), tests <= 110 s, bench <= 195 s. BENCH_ARGS: more bench_moe.py flags
# (--no-triton-sweep).
source benchmarks/device/lib.sh
step build; build_libs cuda_moe cuda_w4
step tests; timeout ${TESTS_S:-110} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore \
  tests/inference/kernels/test_cuda_moe.py tests/inference/kernels/test_moe_w4.py \
  > "$OUT/tests.txt" 2>&1; echo "pytest rc=$?"; grep -E "FAILED|Error|passed|failed" "$OUT/tests.txt" | tail -15
step bench; timeout ${BENCH_S:-195} python3 benchmarks/bench_moe.py --tokens ${TOKENS:-1,16,64} ${BENCH_ARGS:-} --log "$OUT/sweep.txt" \
  2>"$OUT/bench.log" | tee "$OUT/bench_moe.txt"; echo "bench rc=${PIPESTATUS[0]}"
tail -3 "$OUT/bench.log"; grep -c "us$" "$OUT/sweep.txt" | sed 's/^/timed configs: /'; grep FAILED "$OUT/sweep.txt" | head -5
if [ "${NCU:-0}" = 1 ]; then  # optional (~40 s more): ncu of both kernels at T = ${NCU_T:-1}, default config
  step ncu; timeout 90 ncu --clock-control none --kernel-name regex:moe_ --launch-skip 2 --launch-count 2 \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
    python3 benchmarks/ncu_moe.py --tokens ${NCU_T:-1} > "$OUT/ncu.txt" 2>&1
  grep -E "moe_|Duration|DRAM Throughput|Achieved Occupancy|Registers Per|Warp Cycles Per Issued" "$OUT/ncu.txt" | head -16
fi
step done
