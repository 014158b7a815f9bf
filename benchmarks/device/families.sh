#!/usr/bin/env bash
# Every family on the fused fast path, first time on a GPU (built 2026-12-05 on the CPU machine):
# the fast-path tests and the decode attention at Llama's and Gemma 2's head shapes on the
# compiled kernels, then bench_e2e --quick per family shape, bf16 and W4A16: the fast path's
# batch-1 decode beside the reference forward's graph step (what the fused glue gains on Gemma 2's
# sandwich norms, soft-caps and windows, Phi-4-mini's partial rotary, Qwen3's q/k norms). Logs
# under $OUT (one tarball); < 560 s.
#   bash benchmarks/device/families.sh
#   SHAPES="gemma2-9b" LAYERS=21 bash benchmarks/device/families.sh
source benchmarks/device/lib.sh
step build; build_libs cuda_w4 cuda_w8
step tests
timeout ${TESTS_S:-180} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/inference/test_fastpath.py \
  tests/inference/test_kv_quant.py > "$OUT/tests.txt" 2>&1
echo "pytest rc=$?"; grep -E "FAILED|Error|passed|failed" "$OUT/tests.txt" | tail -8
for shape in ${SHAPES:-gemma2-9b phi4-mini qwen3-8b}; do
  step "e2e $shape"
  timeout ${E2E_S:-100} python3 benchmarks/bench_e2e.py --e2e --quick --shape $shape --formats bf16,w4a16 \
    ${LAYERS:+--layers $LAYERS} --out "$OUT/$shape" 2>"$OUT/e2e_$shape.log" | tee "$OUT/e2e_$shape.txt" | head -12
  echo "rc=${PIPESTATUS[0]}"; tail -2 "$OUT/e2e_$shape.log"
done
tar czf /tmp/all.tgz -C "$OUT" . && find "$OUT" -mindepth 1 -delete && mv /tmp/all.tgz "$OUT/"
step done
