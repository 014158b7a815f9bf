#!/usr/bin/env bash
# The norm fold (kernels.fold: the residual add and RMSNorm in o_proj's and down's stores, read by
# q|k|v and gate|up) and the 8-bit decode's GLU in one call:
# - their GPU tests, the W4 GLU's and the fast path's beside them;
# - step_skips.py: the W4A16 step with and without the fold, and with each piece left out;
# - bench_e2e --e2e --quick for bf16 and W4A16 on the shipped path (the ratio and % of the bound);
# - glu_ab.py --format F, the fold and the GLU on and off, for 8-bit formats (batch 1 and 8).
# Carry .scratch/prebuilt.tar.xz; ~510 s at most (each step under its own timeout, the least
# needed last).
#   bash benchmarks/device/fold.sh
#   TESTS_K=none E2E_FORMATS=none FORMATS=w8a16 bash benchmarks/device/fold.sh
source benchmarks/device/lib.sh
step build; build_libs > "$OUT/build.log" 2>&1; tail -1 "$OUT/build.log"
TESTS_K=${TESTS_K:-glu or fold or producer or consumer or captured or rows_with_x_per_stage_matches}
if [ "$TESTS_K" != none ]; then
  step tests
  timeout ${TESTS_S:-180} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/inference/kernels/test_norm_fold.py \
    tests/inference/kernels/test_cuda_w8.py tests/inference/kernels/test_cuda_build.py tests/inference/test_moe_grouped.py \
    tests/inference/test_fastpath.py -k "$TESTS_K" > "$OUT/tests.txt" 2>&1
  echo "pytest rc=$?"; grep -E "FAILED|^ERROR|passed|failed" "$OUT/tests.txt" | tail -8
fi
step "step_skips w4a16"
timeout ${SKIPS_S:-130} python3 benchmarks/device/step_skips.py 2> "$OUT/skips.log" | tee "$OUT/skips.txt" | grep -v "^{"
grep -iE "error|Traceback" "$OUT/skips.log" | head -3
if [ "${E2E_FORMATS:-bf16,w4a16}" != none ]; then
  step "bench_e2e ${E2E_FORMATS:-bf16,w4a16}"
  timeout ${E2E_S:-110} python3 benchmarks/bench_e2e.py --e2e --quick --formats ${E2E_FORMATS:-bf16,w4a16} \
    --out "$OUT/e2e" 2> "$OUT/e2e.log" | grep -E "^\|"; grep -iE "error|Traceback" "$OUT/e2e.log" | head -3
fi
for f in ${FORMATS:-w8a16}; do
  step "glu_ab $f"
  timeout ${AB_S:-80} python3 benchmarks/device/glu_ab.py --format $f --only "default,no fold,no GLU,no GLU or fold" --prompts 32 \
    2> "$OUT/ab_$f.log" | tee "$OUT/ab_$f.txt" | grep -v "^{" | grep -v "^  "
  grep -iE "error|Traceback" "$OUT/ab_$f.log" | head -3
done
step done
