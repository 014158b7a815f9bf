#!/usr/bin/env bash
# One device call for programmatic dependent launch (#11, kernels/pdl.py): the CUDA libraries
# built, the GPU tests of every kernel PDL touches (W4/W8/FP4 decode, attention and the fused glue,
# on vs off in a captured decode), then the 8B end to end with the batch-1 step captured with PDL
# off and on (bench_e2e.py --e2e). Logs under $OUT; under 500 s.
source benchmarks/device/lib.sh
step build; build_libs cuda_w4 cuda_fp4 cuda_w8
python3 -c "
import torch, triton
from turbopack.inference.kernels import pdl
print(f'triton {triton.__version__}; pdl on: {pdl.enabled(torch.device(\"cuda\"))}, triton intrinsics: {pdl.triton_ok()}')"
step tests; timeout ${TESTS_S:-150} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore \
  tests/inference/test_runtime.py tests/inference/test_kv_quant.py tests/inference/kernels/test_cuda_build.py \
  tests/inference/kernels/test_cuda_w8.py tests/inference/kernels/test_cuda_fp4.py \
  > "$OUT/tests.txt" 2>&1; echo "pytest rc=$?"; grep -E "FAILED|Error|passed|failed" "$OUT/tests.txt" | tail -12
step e2e; timeout ${E2E_S:-280} python3 benchmarks/bench_e2e.py --e2e --formats ${FORMATS:-bf16,w4a16,w8a16,fp8,w8a8} \
  --out "$OUT" 2>"$OUT/e2e.log" | grep -E "^\| (bf16|w4a16|w8a16|fp8|w8a8|int8|int4) \||W4A16 / bf16|off / on" | head -24
tail -2 "$OUT/e2e.log"
step done
