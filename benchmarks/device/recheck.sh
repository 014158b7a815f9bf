#!/usr/bin/env bash
# A session's last, short device call: the libraries built, then the GPU tests of every kernel file
# and runtime path the session's last changes touched (the decode kernels' PDL trigger, the runtime's
# PDL modes, the multi-column W4 kernel the shipped table now runs at M = 64). Logs under $OUT; < 240 s.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TRITON_CACHE_DIR=/tmp/triton-cache
step() { echo "=== $1 [$(date +%T)]"; }
step build; timeout 90 python3 -c "
import time, torch
from concurrent.futures import ThreadPoolExecutor
from turbopack.inference.kernels import cuda_fp4, cuda_w4, cuda_w4mm, cuda_w8
t = time.time()
with ThreadPoolExecutor(4) as ex:
    list(ex.map(lambda m: m.library(torch.device('cuda')), (cuda_w4, cuda_w4mm, cuda_fp4, cuda_w8)))
print(f'built in {time.time() - t:.1f}s')"
step tests; timeout ${TESTS_S:-140} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore \
  tests/inference/test_runtime.py tests/inference/test_kv_quant.py tests/inference/kernels/test_cuda_build.py \
  tests/inference/kernels/test_cuda_w8.py tests/inference/kernels/test_cuda_fp4.py tests/inference/kernels/test_cuda_w4mm.py \
  > "$OUT/tests.txt" 2>&1; echo "pytest rc=$?"; grep -E "FAILED|^ERROR|passed|failed" "$OUT/tests.txt" | tail -12
step done
