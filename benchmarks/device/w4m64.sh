#!/usr/bin/env bash
# One device call for the W4A16 multi-column kernel (csrc/w4_mma.cu, kernel "cuda_mm", 16 < M <= 128):
# build + resource report, its GPU tests (and w4.cu's, whose shared header changed), then the tuner at
# M = 64 and 256 over the 8B shapes (merges winners into $OUT/sm90.json) and a table of the best
# cuda_mm config against the winner, bf16 cuBLAS and tinygemm; then M = 32 on the new table, and ncu
# of the new M = 64 winners on gate_up and qkv. Run 8 (warps of 32 rows, WARP_N). Logs under $OUT;
# < 560 s (the sum of the step timeouts).
# Usage (on the device, repo root): bash benchmarks/device/w4m64.sh
source benchmarks/device/lib.sh
export TURBOPACK_CACHE=/tmp/turbopack-cache
step env; nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
python3 -c "import torch; print(torch.__version__, torch.version.cuda)"; nvcc --version | tail -1
step build
nvcc -O3 -std=c++17 -Xptxas -v -gencode=arch=compute_90a,code=sm_90a turbopack/inference/kernels/csrc/w4_mma.cu -c \
  -o /tmp/w4_mma.o > "$OUT/ptxas.txt" 2>&1 &
PTXAS=$!
for mod in cuda_w4mm cuda_w4; do  # both libraries in parallel (common.cuh changed: w4.cu rebuilds too)
  timeout 75 python3 -c "
import time, torch; from turbopack.inference.kernels import $mod as mod
t=time.time(); mod.library(torch.device('cuda')); print(f'{mod.SRC.name} built in {time.time()-t:.1f}s')" &
done
wait
wait $PTXAS; echo "nvcc (resource report) rc=$?"
python3 - "$OUT/ptxas.txt" <<'PY'
import re, sys  # registers and spills per instance (dtype, warps, fragments per warp, token tile)
pat = (r"entry function '\S*?w4_mma_kernelI(\w+?)Li(\d+)ELi(\d+)ELi(\d+)E\S*' for 'sm_90a'(.*?)(\d+) bytes spill "
       r"stores.*?Used (\d+) registers")
for m in re.finditer(pat, open(sys.argv[1]).read(), re.S):
    print(m.group(1).lstrip("0123456789_"), "warps", m.group(2), "R", m.group(3), "BM", m.group(4), "regs", m.group(7),
          "spill", m.group(6))
PY
step tests
timeout 90 python3 -m pytest -q -m gpu -p no:cacheprovider tests/inference/kernels/test_cuda_w4mm.py -W ignore \
  > "$OUT/tests_w4mm.txt" 2>&1
echo "pytest w4mm rc=$?"; grep -E "FAILED|Error|passed|failed" "$OUT/tests_w4mm.txt" | tail -12
timeout 50 python3 -m pytest -q -m gpu -p no:cacheprovider tests/inference/kernels/test_cuda_build.py -W ignore \
  -k "v6_v7 or dequant or (decode_kernel_matches and dtype0)" > "$OUT/tests_w4.txt" 2>&1
echo "pytest w4 rc=$?"; grep -E "FAILED|Error|passed|failed" "$OUT/tests_w4.txt" | tail -6
step tune
timeout 250 python3 benchmarks/bench_linear.py --tune --jobs 15 --formats w4a16 --ms 64,256 --out "$OUT" \
  2>"$OUT/tune.log" | tee "$OUT/tune.txt"
echo "tune rc=$?"; grep -E "FAILED|REJECTED|compile:" "$OUT/tune.log" | head -8
step batch32
# M = 32 (batch-32 decode) runs the M = 64 bucket's entry: the tuned table installed in this copy of the tree
if [ -s "$OUT/sm90.json" ]; then
  cp "$OUT/sm90.json" turbopack/inference/kernels/configs/sm90.json
  timeout 45 python3 benchmarks/bench_linear.py --formats w4a16 --ms 32 --out "$OUT/m32" 2>"$OUT/m32.log" \
    | grep -E "w4a16|µs" | head -6
  echo "m32 rc=$?"
fi
step table
python3 - "$OUT/bench.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
print(f"{'shape':>11} {'M':>4} {'winner':<44} {'us':>7} {'cuda_mm':>8} {'bf16':>7} {'tgemm':>7} {'mm/bf16':>7}")
for r in rows:
    if "error" in r:
        print(r["shape"], r["m"], r["error"]); continue
    best = r.get("best_by_kernel", {})
    mm = best.get("cuda_mm", [float("nan")])[0]
    bf = r["peers"].get("bf16", float("nan"))
    win = r["cfg"]; desc = win["kernel"] + "(" + ",".join(f"{k}={v}" for k, v in win.items() if k != "kernel") + ")"
    print(f"{r['shape'][0]:>5}x{r['shape'][1]:<5} {r['m']:>4} {desc[:44]:<44} {r['us']:7.1f} {mm:8.1f} {bf:7.1f} "
          f"{r['peers'].get('tinygemm', float('nan')):7.1f} {mm / bf:7.2f}")
    if "cuda_mm" in best:
        print(f"{'':>17} best cuda_mm: {best['cuda_mm'][1]}")
PY
step ncu
SECTIONS="--section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats"
for shape in gate_up qkv; do  # what dispatch now runs at M = 64 (the table installed above)
  timeout 60 ncu --clock-control none --kernel-name regex:w4_mma --launch-skip 3 --launch-count 1 $SECTIONS \
    python3 benchmarks/ncu_linear.py --format w4a16 --shape $shape --m 64 > "$OUT/ncu_$shape.txt" 2>&1
  echo "ncu $shape rc=$?"
  grep -E "rel err|w4_mma_kernel|Duration|DRAM Through|Compute \(SM\)|Registers Per|Achieved Occ|Warp Cycles Per Issued|No Eligible" \
    "$OUT/ncu_$shape.txt" | head -10
done
step done
