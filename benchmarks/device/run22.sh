#!/usr/bin/env bash
# Run 22's call: VARIANT 6 with x staged in shared memory (w4_rowsx.cuh, off by default) checked
# against x per stage and the contract (test_cuda_build.py's rows-with-x tests), then the 8B W4A16
# step alternating the shipped library (x per stage), the same with x staged, and diagnostic builds
# (build_ab.py: x's per-stage loads knocked out, 128-byte ring slots; carry
# .scratch/ab.tar.xz, built here with --offline), then the 8B step against bf16 (bench_e2e --quick), then ncu's
# per-SASS-line stall sampling of the kernels with x staged at M = 1 (ncu_source.py). Logs under $OUT.
source benchmarks/device/lib.sh
step build; build_libs cuda_w4
step "gpu tests: rows with x"
timeout ${TESTS_S:-150} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/inference/kernels/test_cuda_build.py \
  -k "x_staged or x_per_stage" > "$OUT/gpu_tests_rowsx.txt" 2>&1
echo "rc=$?"; tail -3 "$OUT/gpu_tests_rowsx.txt"
step "build_ab ${AB_NAMES:=x-staged,nox,slot128}"
timeout ${AB_S:-260} python3 benchmarks/device/build_ab.py --libs .scratch/ab.tar.xz --names "$AB_NAMES" \
  --same-bits "${AB_SAME:-x-staged,slot128}" --reps ${AB_REPS:-2} 2> "$OUT/ab.log" | tee "$OUT/ab.txt"
echo "rc=${PIPESTATUS[0]}"; tail -3 "$OUT/ab.log"
step "bench_e2e --e2e --quick (bf16, w4a16; x staged)"
TURBOPACK_W4_STAGE_X=1 timeout ${E2E_S:-120} python3 benchmarks/bench_e2e.py --e2e --quick --formats bf16,w4a16 --out "$OUT" \
  > "$OUT/e2e.txt" 2> "$OUT/e2e.log"
echo "rc=$?"; grep -iE "w4a16|bf16|bound|tok/s" "$OUT/e2e.txt" | head -12
cfg() { echo "{\"kernel\": \"cuda\", \"SPLIT_K\": $1, \"STAGES\": 4, \"VARIANT\": 6, \"GLU_WARPS\": 16}"; }
src() {  # name, then ncu_linear.py's arguments: $OUT/src_<name>.ncu-rep and its summary
  local name=$1; shift
  step "ncu source $name"
  TURBOPACK_W4_STAGE_X=1 timeout ${NCU_S:-70} ncu --clock-control none --kernel-name regex:rows --launch-skip 3 --launch-count 1 \
    --section SourceCounters --section WarpStateStats --section SpeedOfLight -o "$OUT/src_$name" \
    python3 benchmarks/ncu_linear.py "$@" > "$OUT/src_$name.log" 2>&1
  echo "rc=$?"; tail -2 "$OUT/src_$name.log"
  python3 benchmarks/device/ncu_source.py "$OUT/src_$name.ncu-rep" --top 40 > "$OUT/src_$name.txt" 2>&1
  head -30 "$OUT/src_$name.txt" | cut -c1-160
}
[ "${NCU:-1}" = 1 ] && src glu --shape gate_up --m 1 --glu --cfg "$(cfg 16)"
[ "${NCU:-1}" = 1 ] && src o --shape o --m 1 --cfg "$(cfg 8)"
step done
