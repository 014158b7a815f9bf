#!/usr/bin/env bash
# Run 27's follow-up call (next session's first): the one-launch MoE layer in 16 and 24 warps
# (run 27's first call, H100: correct, but 17.4 µs at T = 1 in 16 warps where the two-launch
# default takes 13.1). Its GPU tests (-k fused); bench_moe at T = 1, the first 6 CUDA candidates
# (the default, it without PDL, fused in 16 and 24 warps, each plain and as a PDL secondary);
# knockout.py --only moe (those configs built with the math, the weight copies, every copy, x's
# loads or the grid barrier left out); ncu's per-instruction stalls of the fused kernel
# (ncu_source.py); on an H200, if time is left, run 26's bench_e2e --quick. Carry
# .scratch/knockout.tar.xz (knockout.py --offline .scratch/knockout --only moe, ~5 min here),
# .scratch/prebuilt.tar.xz and .scratch/tables. Under 450 s.
source benchmarks/device/lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
step build; build_libs cuda_moe
step "test_cuda_moe.py -k fused"
timeout ${TESTS_S:-90} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore -rf \
  tests/inference/kernels/test_cuda_moe.py -k "${K:-fused}" > "$OUT/moe_tests.txt" 2>&1
echo "rc=$?"; grep -cE "PASSED|^\." "$OUT/moe_tests.txt"; grep -E "^FAILED|^ERROR|passed|failed" "$OUT/moe_tests.txt" | tail -8
step "bench_moe T=1: default, no PDL, fused 16 / 24 warps, each plain and PDL"
timeout ${MOE_S:-90} python3 benchmarks/bench_moe.py --tokens 1 --no-sweep --cuda-head 6 --log "$OUT/moe_cands.txt" \
  > "$OUT/moe.txt" 2> "$OUT/moe.log"
echo "rc=$?"; grep -E "^\| 1 |copy" "$OUT/moe.txt"; grep -E " us$" "$OUT/moe_cands.txt" | head -8
step "knockout.py --only moe"
timeout ${KO_S:-200} python3 benchmarks/device/knockout.py --libs .scratch/knockout.tar.xz --only moe \
  --out "$OUT/ko.json" 2> "$OUT/ko.log"; echo "rc=$?"; tail -2 "$OUT/ko.log"
step "ncu source: moe_fused (16 warps)"
timeout ${NCU_S:-90} ncu --clock-control none --kernel-name regex:moe_fused --launch-skip 3 --launch-count 1 \
  --section SourceCounters --section WarpStateStats -o "$OUT/fused" -f \
  python3 benchmarks/bench_moe.py --tokens 1 --no-sweep --cuda-head 3 --log /dev/null > "$OUT/ncu_src.log" 2>&1
echo "rc=$?"; python3 benchmarks/device/ncu_source.py "$OUT/fused.ncu-rep" --top 30 > "$OUT/fused_source.txt" 2>&1
echo "rc=$?"; head -60 "$OUT/fused_source.txt"; rm -f "$OUT"/fused.ncu-rep.source.csv
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && [ $SECONDS -lt ${EXTRAS_BY_S:-250} ]; then
  step "bench_e2e --e2e --quick (bf16, w4a16)"
  timeout ${E2E_S:-100} python3 benchmarks/bench_e2e.py --e2e --quick --formats bf16,w4a16 --out "$OUT" > "$OUT/e2e.txt" 2> "$OUT/e2e.log"
  echo "rc=$?"; grep -E "copy bandwidth|^\| (bf16|w4a16) |bar" "$OUT/e2e.txt"
fi
step done
