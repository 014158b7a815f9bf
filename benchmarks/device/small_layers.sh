#!/usr/bin/env bash
# The small layers' fixed cost (run 11: o and qkv at M = 1 at 18-37% of copy bandwidth, the MoE
# layer at T = 1 at 26%, both made of 6-13 MB matmuls): overhead.py's fit of µs against bytes
# (v7 at the shipped split and at split 1, bf16 beside), then the grouped MoE on this tree
# (bench_moe.py, Qwen3-30B-A3B shapes, T = 1 and 64), the 8B step with lm_head quantized too
# (bf16 lm_head: 238 of W4A16's 2311 µs in run 11), then ncu of o at M = 1 with the launch and
# scheduler sections. Logs under $OUT (one tarball); < 560 s.
#   bash benchmarks/device/small_layers.sh
source benchmarks/device/lib.sh
step build; build_libs cuda_w4 cuda_moe > "$OUT/build.log" 2>&1; tail -1 "$OUT/build.log"
step overhead
timeout ${FIT_S:-150} python3 benchmarks/device/overhead.py 2> "$OUT/overhead.log" | tee "$OUT/overhead.txt" | grep -v "^{"
step "bench_moe --tokens 1,64"
timeout ${MOE_S:-180} python3 benchmarks/bench_moe.py --tokens 1,64 --log "$OUT/moe_candidates.log" \
  2> "$OUT/moe.log" | tee "$OUT/moe.txt" | head -30
step "e2e quick, lm_head quantized"
timeout ${E2E_S:-90} python3 benchmarks/bench_e2e.py --e2e --quick --formats bf16,w4a16,w4a16+head --out "$OUT/e2e" \
  2> "$OUT/e2e.log" | grep -E "^\| (bf16|w4a16)" | tee "$OUT/e2e.txt"
step "ncu o M=1"
SECTIONS="--section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats --section SchedulerStats"
timeout 60 ncu --clock-control none --kernel-name regex:w4_decode --launch-skip 3 --launch-count 1 $SECTIONS \
  python3 benchmarks/ncu_linear.py --format w4a16 --shape o --m 1 > "$OUT/ncu_o.txt" 2>&1
echo "rc=$?"; grep -E "Duration|DRAM Throughput|Achieved Occ|Waves Per SM|Grid Size|No Eligible|Warp Cycles Per Issued" \
  "$OUT/ncu_o.txt" | head -8
tar czf /tmp/all.tgz -C "$OUT" . && find "$OUT" -mindepth 1 -delete && mv /tmp/all.tgz "$OUT/"
step done
