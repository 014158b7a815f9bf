#!/usr/bin/env bash
# Run 23's last call, on the tree with the rows' ring slots on 128-byte rows (the new default) and x
# staged backed out: the GPU tests of the rows kernels (plain, GLU, the norm fold, through graphs,
# against the contract), then bench_e2e --quick (bf16, w4a16). Logs under $OUT; carry
# .scratch/prebuilt.tar.xz.
source benchmarks/device/lib.sh
step build; build_libs cuda_w4
step "gpu tests: rows, GLU, fold"
timeout ${TESTS_S:-200} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/inference/kernels/test_cuda_build.py \
  tests/inference/kernels/test_norm_fold.py -k "rows or glu or fold or captured" > "$OUT/gpu_tests.txt" 2>&1
echo "rc=$?"; grep -E "FAILED|^ERROR" "$OUT/gpu_tests.txt" | head -5; tail -2 "$OUT/gpu_tests.txt"
step "bench_e2e --e2e --quick (bf16, w4a16)"
timeout ${E2E_S:-90} python3 benchmarks/bench_e2e.py --e2e --quick --formats bf16,w4a16 --out "$OUT" > "$OUT/e2e.txt" 2> "$OUT/e2e.log"
echo "rc=$?"; grep -E "^\| (bf16|w4a16) |bar" "$OUT/e2e.txt"
step done
