#!/usr/bin/env bash
# Run 26's first call: the MoE layer in one launch (MoECudaConfig.fused, csrc/moe_fused.cuh) checked
# (test_cuda_moe.py whole: the fused cases, the chained PDL steps, the routed default at T = 64 on
# the model's shapes), timed at T = 1 beside the two-launch default (bench_moe --cuda-head 4: default,
# its down without PDL, fused, fused as a PDL secondary) and at T = 64, an ncu pass over the fused
# kernel; on an H200 also run 25's 8B step and GLU-in-8-warps A/B. Logs under $OUT; carry
# .scratch/prebuilt.tar.xz and .scratch/tables. Under 560 s.
source benchmarks/device/lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
step build; build_libs cuda_moe cuda_w4
step "test_cuda_moe.py"
timeout ${TESTS_S:-170} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore -rf \
  tests/inference/kernels/test_cuda_moe.py ${K:+-k "$K"} > "$OUT/moe_tests.txt" 2>&1
echo "rc=$?"; grep -E "^FAILED|^ERROR|passed|failed" "$OUT/moe_tests.txt" | tail -12
step "bench_moe T=1 (default, no PDL, fused, fused PDL), T=64 default"
timeout ${MOE_S:-110} python3 benchmarks/bench_moe.py --tokens 1,64 --no-sweep --cuda-head 4 --log "$OUT/moe_cands.txt" \
  > "$OUT/moe.txt" 2> "$OUT/moe.log"
echo "rc=$?"; grep -E "^\| (1|64) |copy" "$OUT/moe.txt"; grep -E "us|fail|FAIL" "$OUT/moe_cands.txt" | head -12
# the H200's extras only where the call has time left for them (SECONDS: this script's)
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && [ $SECONDS -lt ${EXTRAS_BY_S:-250} ]; then
  step "bench_e2e --e2e --quick (bf16, w4a16)"
  timeout ${E2E_S:-100} python3 benchmarks/bench_e2e.py --e2e --quick --formats bf16,w4a16 --out "$OUT" > "$OUT/e2e.txt" 2> "$OUT/e2e.log"
  echo "rc=$?"; grep -E "copy bandwidth|^\| (bf16|w4a16) |bar" "$OUT/e2e.txt"
  step "build_ab --table glu8"
  timeout ${AB_S:-130} python3 benchmarks/device/build_ab.py --table glu8=shipped:.scratch/tables/glu8.json \
    --reps ${AB_REPS:-3} 2> "$OUT/ab_w4.log" | tee "$OUT/ab_w4.txt" | grep -E "mean"
  echo "rc=${PIPESTATUS[0]}"; tail -2 "$OUT/ab_w4.log"
fi
[ $SECONDS -lt ${NCU_BY_S:-480} ] && ncu_prof fused "moe_fused" python3 benchmarks/bench_moe.py --tokens 1 --no-sweep --cuda-head 3 --log /dev/null
step done
