#!/usr/bin/env bash
# The runtime's launch-saving fusions, first device run (run 10):
# - the one-launch decode attention (rotary of q, the new token's K/V store and the split merge in
#   the split kernel; attention.decode_attention_qkv): its GPU tests against rope_store + attention
#   at the 8B heads (graph replays), the KV kernels' tests, and the runtime's decode tests;
# - the dense W4 MLP as the grouped MoE decode's one expert (moe_grouped.dense_as_one_expert,
#   fastpath.GROUPED_MLP_MAX_TOKENS, off by default): its GPU test, grouped against dense;
# - the 8B end to end, bf16 and W4A16, with bench_e2e's fusion A/B (the step with each fusion off
#   and on, batch 1 and 8) and the kernel profile of the step.
# If grouped_mlp wins the A/B, set GROUPED_MLP_MAX_TOKENS (docs/benchmarks.md gets the table).
# One tarball; < 560 s.
source benchmarks/device/lib.sh
export BUILD_S=${BUILD_S:-170}
step build; build_libs cuda_w4 cuda_w4mm cuda_w4wg cuda_moe
step tests
timeout ${TESTS_S:-150} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/inference/test_kv_quant.py \
  tests/inference/test_moe_grouped.py tests/inference/test_runtime.py tests/inference/kernels/test_cuda_moe.py \
  > "$OUT/tests.txt" 2>&1
RC=$?; echo "pytest rc=$RC"; grep -E "FAILED|^ERROR|passed|failed" "$OUT/tests.txt" | tail -8
step e2e
[ "$RC" = 0 ] && timeout ${E2E_S:-340} python3 benchmarks/bench_e2e.py --e2e --formats bf16,w4a16 --out "$OUT" \
  2>"$OUT/e2e.log" | tee "$OUT/e2e.txt" | grep -E "^\| (bf16|w4a16|1|8) |bar" | head -8; tail -1 "$OUT/e2e.log"
tar czf /tmp/all.tgz -C "$OUT" . && find "$OUT" -mindepth 1 -delete && mv /tmp/all.tgz "$OUT/"
step done
