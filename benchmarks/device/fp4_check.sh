#!/usr/bin/env bash
# One device call for the NVFP4 CUDA decode kernel (issue 15, csrc/fp4.cu), < 200 s on an H200:
# build + resource report, its GPU tests, then the tuned NVFP4 / W4A16 linear benchmark at M = 1, 16.
# Usage (on the device, repo root): bash benchmarks/device/fp4_check.sh ; logs and bench.json under $OUT.
source benchmarks/device/lib.sh
step env; nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
step build; python3 -c "
import time, torch; from turbopack.inference.kernels import cuda_fp4
t=time.time(); cuda_fp4.library(torch.device('cuda')); print(f'built in {time.time()-t:.1f}s')"
step tests; timeout 50 python3 -m pytest -q -x -m gpu tests/inference/kernels/test_cuda_fp4.py -p no:cacheprovider 2>&1 | tail -15
step bench; timeout ${BENCH_S:-120} python3 benchmarks/bench_linear.py --tune --jobs 15 --formats nvfp4,w4a16 --ms 1,16 \
  --out "$OUT" 2>"$OUT/bench.log" | tee "$OUT/bench_table.txt"
# the per-row lines (what survives a timeout) and any CUDA config the check rejected
grep -E "REJECTED|FAILED" "$OUT/bench.log" | head -10; tail -22 "$OUT/bench.log"
step done
