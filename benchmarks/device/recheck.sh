#!/usr/bin/env bash
# A session's last, short device call: the libraries built, then the GPU tests of every kernel file
# and runtime path the session's last changes touched (the decode kernels' PDL trigger, the runtime's
# PDL modes, the multi-column W4 kernel the shipped table now runs at M = 64). Logs under $OUT; < 240 s.
source benchmarks/device/lib.sh
step build; build_libs cuda_w4 cuda_w4mm cuda_fp4 cuda_w8
step tests; timeout ${TESTS_S:-140} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore \
  tests/inference/test_runtime.py tests/inference/test_kv_quant.py tests/inference/kernels/test_cuda_build.py \
  tests/inference/kernels/test_cuda_w8.py tests/inference/kernels/test_cuda_fp4.py tests/inference/kernels/test_cuda_w4mm.py \
  > "$OUT/tests.txt" 2>&1; echo "pytest rc=$?"; grep -E "FAILED|^ERROR|passed|failed" "$OUT/tests.txt" | tail -12
step done
