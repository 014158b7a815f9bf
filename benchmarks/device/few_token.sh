#!/usr/bin/env bash
# The MoE's few-token kernels (csrc/moe_token.cuh), next to what they may also serve, in one call:
# - their GPU tests, with test_moe_grouped's dense-MLP-as-one-expert test;
# - bench_moe at T = 1 and 2 on Qwen3-30B-A3B, swept: pdl_gate_up off and on (gate_up by pair as a
#   PDL secondary of the call before it; the default only if it wins);
# - the same on the 8B MLP as one expert (--shape llama3-8b-mlp: at T <= 2 the few-token kernels
#   run it), against the dense loop;
# - the 8B step with the fusion A/B (bench_e2e --quick --fusion-ab: GROUPED_MLP_MAX_TOKENS off and
#   on, batch 1 and 8). If grouped_mlp wins at batch 1, set fastpath.GROUPED_MLP_MAX_TOKENS to 2.
# Carry .scratch/prebuilt.tar.xz (build_libs.py --offline .scratch/prebuilt 9.0). Logs under $OUT;
# < 480 s.
#   bash benchmarks/device/few_token.sh
source benchmarks/device/lib.sh
export BUILD_S=${BUILD_S:-170}
step build; build_libs > "$OUT/build.log" 2>&1; tail -1 "$OUT/build.log"
step tests
timeout ${TESTS_S:-100} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/inference/kernels/test_cuda_moe.py \
  tests/inference/kernels/test_moe_w4.py tests/inference/test_moe_grouped.py > "$OUT/tests.txt" 2>&1
echo "pytest rc=$?"; grep -E "FAILED|^ERROR|passed|failed" "$OUT/tests.txt" | tail -8
step "Qwen3-30B-A3B MoE, T = 1, 2"
timeout ${MOE_S:-70} python3 benchmarks/bench_moe.py --tokens 1,2 --no-triton-sweep --log "$OUT/sweep.txt" \
  2> "$OUT/bench.log" | tee "$OUT/bench_moe.txt" | grep -E "^\||^T="
step "8B MLP as one expert, T = 1, 2"
timeout ${MLP_S:-90} python3 benchmarks/bench_moe.py --shape llama3-8b-mlp --tokens 1,2 --no-triton-sweep \
  --log "$OUT/sweep_mlp.txt" 2> "$OUT/bench_mlp.log" | tee "$OUT/bench_mlp.txt" | grep -E "^\||^T="
step "8B step, fusion A/B"
timeout ${E2E_S:-200} python3 benchmarks/bench_e2e.py --e2e --quick --fusion-ab --formats bf16,w4a16 --out "$OUT/e2e" \
  2> "$OUT/e2e.log" | grep -E "^\| (bf16|w4a16|1|8) " | tee "$OUT/e2e.txt"; tail -1 "$OUT/e2e.log"
step done
