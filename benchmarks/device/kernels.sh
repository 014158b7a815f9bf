#!/usr/bin/env bash
# One device call for the kernel work (#11): environment, build + SASS resource report, the GPU
# kernel tests, the tuned linear benchmark, ncu of the W4 decode kernel, the 8B end-to-end decode.
# Usage (on the device, repo root): bash benchmarks/device/kernels.sh [FORMATS] ; logs under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
FORMATS=${1:-w4a16}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TRITON_CACHE_DIR=/tmp/triton-cache
step() { echo "=== $1 [$(date +%T)]"; }
step env; nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv,noheader; python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
step build; python3 -c "
import time, torch; from turbopack.inference.kernels import cuda_w4
t=time.time(); cuda_w4.library(torch.device('cuda')); print(f'built in {time.time()-t:.1f}s')"
step tests; timeout 300 python3 -m pytest -q -x -m gpu tests/inference/kernels -p no:cacheprovider 2>&1 | tail -15
step bench; timeout ${BENCH_S:-330} python3 benchmarks/bench_linear.py --tune --jobs 15 --formats "$FORMATS" --out "$OUT" 2>"$OUT/bench.log" | tee "$OUT/bench_table.txt"
tail -5 "$OUT/bench.log"
step ncu; timeout 90 ncu --clock-control none --kernel-name regex:w4_decode --launch-skip 3 --launch-count 1 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
  python3 benchmarks/ncu_w4_decode.py --shape gate_up --m 1 ${NCU_ARGS:-} > "$OUT/ncu.txt" 2>&1
grep -E "Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Warp Cycles Per Issued|No Eligible|Eligible Warps" "$OUT/ncu.txt" | head -20
step e2e; cp "$OUT"/sm90.json turbopack/inference/kernels/configs/sm90.json 2>/dev/null && echo "using the tuned table"
timeout ${E2E_S:-200} python3 benchmarks/bench_e2e.py --e2e --out "$OUT" 2>"$OUT/e2e.log" | grep -E "^\| (bf16|w4a16)|W4A16 / bf16|^\| \`" | head -40
step done
