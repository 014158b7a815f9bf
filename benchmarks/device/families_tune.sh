#!/usr/bin/env bash
# The runtime's GPU tests for what changed since run 10 (every family on the fast path, the
# attention reading each layer's scale/soft-cap/window, Gemma's embedding scale in a CUDA graph),
# then the W4A16 tuner on the other families' layer shapes (bench_linear.py --model: Qwen3-8B's
# MLP, Gemma-2-9B's and Phi-4-mini's four linears; M = 1, 8), each run's winners merged into the
# tree's configs/sm90.json before the next, then bench_e2e --quick per family on that table. Logs
# and the merged table under $OUT (one tarball); < 560 s.
#   bash benchmarks/device/families_tune.sh
#   MODELS="phi4-mini" MS=1 bash benchmarks/device/families_tune.sh
source benchmarks/device/lib.sh
step build; build_libs cuda_w4 cuda_w4mm cuda_w4wg cuda_moe cuda_w8 > "$OUT/build.log" 2>&1; tail -1 "$OUT/build.log"
step tests
timeout ${TESTS_S:-180} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/inference/test_fastpath.py \
  tests/inference/test_kv_quant.py tests/inference/test_runtime.py tests/inference/kernels/test_router.py \
  tests/inference/test_moe_grouped.py tests/inference/test_hf_dropin.py > "$OUT/tests.txt" 2>&1
echo "pytest rc=$?"; grep -E "FAILED|^ERROR|passed|failed" "$OUT/tests.txt" | tail -8
T=turbopack/inference/kernels/configs/sm90.json
for model in ${MODELS:-qwen3-8b gemma2-9b phi4-mini}; do
  step "tune $model"
  shapes=$([ $model = qwen3-8b ] && echo gate_up,down || echo qkv,o,gate_up,down)  # qwen3's attention is Llama's
  mkdir -p "$OUT/$model"
  timeout ${TUNE_S:-90} python3 benchmarks/bench_linear.py --tune --jobs 15 --formats w4a16 --model $model \
    --shapes $shapes --ms ${MS:-1,8} --out "$OUT/$model" 2>"$OUT/$model/tune.log" | grep -E "M=" | tee "$OUT/$model/tune.txt"
  [ -s "$OUT/$model/sm90.json" ] && cp "$OUT/$model/sm90.json" $T
done
cp $T "$OUT/sm90.json"
for model in ${E2E:-gemma2-9b phi4-mini}; do
  step "e2e $model"
  timeout ${E2E_S:-80} python3 benchmarks/bench_e2e.py --e2e --quick --shape $model --formats bf16,w4a16 \
    --out "$OUT/$model" 2>"$OUT/e2e_$model.log" | tee "$OUT/e2e_$model.txt" | grep -E "^\| (bf16|w4a16)"
  echo "rc=${PIPESTATUS[0]}"; tail -1 "$OUT/e2e_$model.log"
done
tar czf /tmp/all.tgz -C "$OUT" . && find "$OUT" -mindepth 1 -delete && mv /tmp/all.tgz "$OUT/"
step done
