#!/usr/bin/env bash
# The session's last device call: kernel checks first (they gate everything), then the tuned W4
# sweep, the 8B decode, the README-command GPU tests on the merged tree, ncu last.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TRITON_CACHE_DIR=/tmp/triton-cache
step() { echo "=== $1 [$(date +%T)]"; }
step kernel-tests; timeout 120 python3 -m pytest -q -m gpu tests/inference/kernels -p no:cacheprovider 2>&1 | tail -4
step bench; timeout 110 python3 benchmarks/bench_linear.py --tune --jobs 15 --formats w4a16 --out "$OUT" 2>"$OUT/bench.log" > "$OUT/bench_table.txt"; grep -E "^w4a16|^(PASS|MISS)" "$OUT/bench_table.txt" | cut -c1-150
cp "$OUT"/sm90.json turbopack/inference/kernels/configs/sm90.json 2>/dev/null
step e2e; timeout 75 python3 benchmarks/bench_e2e.py --e2e --out "$OUT" 2>"$OUT/e2e.log" | grep -E "^\| (bf16|w4a16) \||W4A16 / bf16" | head -4
step readme-tests; timeout ${README_S:-120} python3 -m pytest -q -m gpu tests/cli/test_gpu_readme.py -p no:cacheprovider -x --deselect tests/cli/test_gpu_readme.py::test_check_with_no_argument_has_passing_gpu_rows 2>&1 | tail -4
step ncu; timeout 40 ncu --clock-control none --kernel-name regex:w4_decode --launch-skip 3 --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats python3 benchmarks/ncu_w4_decode.py --shape gate_up --m 1 --split 2 --stages 4 2>&1 | grep -E "Duration|DRAM Throughput|Compute \(SM\)|Achieved Occupancy|Theoretical Occupancy|Registers Per|Warp Cycles Per Issued" | head -8
step done
