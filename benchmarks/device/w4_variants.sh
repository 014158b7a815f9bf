#!/usr/bin/env bash
# One device call for the W4 decode variants (#11, csrc/w4.cu: v5 = VARIANT unset, v6 = 1, v7 = 2):
# build + resource report, the W4 GPU kernel tests, the v5/v6/bf16/tinygemm sweep at the 8B shapes
# (benchmarks/w4_variants.py), ncu of the best v6/v7 config at gate_up M=1. Logs under $OUT; < 300 s.
# Usage (on the device, repo root): bash benchmarks/device/w4_variants.sh
source benchmarks/device/lib.sh
export TURBOPACK_CACHE=/tmp/turbopack-cache
step env; nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
python3 -c "import torch; print(torch.__version__, torch.version.cuda)"; nvcc --version | tail -1
step build
# the resource report's compile runs beside the library build (each ~25 s of one nvcc)
nvcc -O3 -std=c++17 -Xptxas -v -gencode=arch=compute_90a,code=sm_90a turbopack/inference/kernels/csrc/w4.cu -c \
  -o /tmp/w4.o > "$OUT/ptxas.txt" 2>&1 &
PTXAS=$!
python3 -c "
import time, torch; from turbopack.inference.kernels import cuda_w4
t=time.time(); cuda_w4.library(torch.device('cuda')); print(f'library built in {time.time()-t:.1f}s')"
wait $PTXAS; echo "nvcc (resource report) rc=$?"
python3 - "$OUT/ptxas.txt" <<'PY'
import re, sys  # registers and spills of the bf16, asym, group-128 decode kernels (v5, v6 = v6 SZR 0, v7 = SZR 1)
txt = open(sys.argv[1]).read()
pat = r"entry function '\S*?(w4_decode_(?:v6_)?kernel)I13__nv_bfloat16Li(\d)ELi(\d)ELi128ELb1E(Lb\d)?\S*' for 'sm_90a'"
for m in re.finditer(pat + r"(.*?)Used (\d+) registers", txt, re.S):
    spill = re.search(r"(\d+) bytes spill stores", m.group(5)).group(1)
    print(m.group(1), "SZR" + (m.group(4) or "-"), "NTOK", m.group(2), "STAGES", m.group(3), "regs", m.group(6), "spill", spill)
PY
step tests
timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests/inference/kernels/test_cuda_build.py \
  tests/inference/kernels/test_kernels.py -k "decode or v6 or w4a16 or dequant" -W ignore > "$OUT/tests.txt" 2>&1
echo "pytest rc=$?"; grep -E "FAILED|Error|passed|failed" "$OUT/tests.txt" | tail -12
step sweep
timeout 90 python3 benchmarks/w4_variants.py --out "$OUT" 2>"$OUT/sweep.log" | tee "$OUT/w4_variants.txt"
tail -3 "$OUT/sweep.log"
step ncu
ARGS=$(cat "$OUT/ncu_args.txt" 2>/dev/null || echo "--variant 2 --stages 8")
echo "ncu: gate_up M=1 $ARGS"
timeout 50 ncu --clock-control none --kernel-name regex:w4_decode --launch-skip 3 --launch-count 1 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
  python3 benchmarks/ncu_w4_decode.py --shape gate_up --m 1 $ARGS > "$OUT/ncu.txt" 2>&1
grep -E "w4_decode|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Shared Memory Config|Dynamic Shared|Grid Size|Waves Per SM|Warp Cycles Per Issued|No Eligible|Eligible Warps|Issued Warp" "$OUT/ncu.txt" | head -24
step done
