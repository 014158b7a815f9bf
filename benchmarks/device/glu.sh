#!/usr/bin/env bash
# The W4 MLP's activation in gate|up's store (cuda_w4 glu, fastpath.GLU_DECODE) and the attention's live
# splits by position (attention.LIVE_SPLITS, MIN_SPLIT_LEN) in one call:
# - their GPU tests, the rows-with-x, MoE few-token (act_mul is shared now) and fast-path tests beside them;
# - glu_ab.py: the 8B W4A16 step at positions 40 and 160, batch 1 and 8, each switch on and off, and a
#   kernel profile; attn_splits.py: one layer's attention by cache length and position;
# - bench_e2e --e2e --quick for bf16 and W4A16 on the shipped path (the ratio and % of the bound).
# Carry .scratch/prebuilt.tar.xz; < 480 s.
#   bash benchmarks/device/glu.sh
#   TESTS_K=none E2E_FORMATS=bf16,w4a16,w8a16 bash benchmarks/device/glu.sh
source benchmarks/device/lib.sh
step build; build_libs > "$OUT/build.log" 2>&1; tail -1 "$OUT/build.log"
TESTS_K=${TESTS_K:-glu or rows_with_x_per_stage_matches or falls_back or qwen3 or h_per_stage or few or decode_kernel or attention or captured}
if [ "$TESTS_K" != none ]; then
  step tests
  timeout ${TESTS_S:-200} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore \
    tests/inference/kernels/test_cuda_build.py tests/inference/kernels/test_cuda_moe.py tests/inference/test_moe_grouped.py \
    tests/inference/test_kv_quant.py tests/inference/test_fastpath.py -k "$TESTS_K" > "$OUT/tests.txt" 2>&1
  echo "pytest rc=$?"; grep -E "FAILED|^ERROR|passed|failed" "$OUT/tests.txt" | tail -8
fi
step "8B step A/B"
timeout ${AB_S:-200} python3 benchmarks/device/glu_ab.py 2> "$OUT/ab.log" | tee "$OUT/ab.txt" | grep -v "^{"
grep -iE "error|Traceback" "$OUT/ab.log" | head -3
step "attention splits by position"
timeout ${ATTN_S:-80} python3 benchmarks/device/attn_splits.py 2> "$OUT/attn.log" | tee "$OUT/attn.md"
grep -iE "error|Traceback" "$OUT/attn.log" | head -3
step "bench_e2e ${E2E_FORMATS:-bf16,w4a16}"
timeout ${E2E_S:-150} python3 benchmarks/bench_e2e.py --e2e --quick --formats ${E2E_FORMATS:-bf16,w4a16} --out "$OUT/e2e" \
  2> "$OUT/e2e.log" | grep -E "^\|"; grep -iE "error|Traceback" "$OUT/e2e.log" | head -3
step done
