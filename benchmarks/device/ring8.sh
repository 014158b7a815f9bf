#!/usr/bin/env bash
# Run 21's second call: the W4 rows with x per stage at ring 8 (VARIANT 6, one token column, 8 warps:
# 7 stages a warp in flight before pdl_wait) and on a persistent grid (VARIANT 7). Their GPU tests
# (bit for bit VARIANT 6 at ring 4, plain and GLU; refused where not built), then the 8B W4A16 step
# (timeline.py) with ring 8 on each layer, all together, gate|up's GLU in 8 warps at ring 8, and
# gate|up persistent in 16 and 8 warps, the list twice (the drift), and the timeline of TL's entry.
# Then the glue kernels' trigger before their wait against after it (TURBOPACK_GLUE_TRIGGER), in
# alternating processes. Logs under $OUT.
source benchmarks/device/lib.sh
step build; build_libs cuda_w4
step tests
timeout ${TESTS_S:-150} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/inference/kernels/test_cuda_build.py \
  -k "ring_8 or glu_is_linear or x_per_stage_matches or persistent_rows" > "$OUT/tests.txt" 2>&1
echo "pytest rc=$?"; grep -E "FAILED|^ERROR|passed|failed" "$OUT/tests.txt" | tail -6
A="qkv:STAGES=8,o:STAGES=8,down:STAGES=8,qkv:STAGES=8+o:STAGES=8+down:STAGES=8,gate_up:GLU_WARPS=8/STAGES=8"
A="$A,gate_up:VARIANT=7,gate_up:VARIANT=7/GLU_WARPS=8"
step "step variants"
timeout ${TL_S:-300} python3 benchmarks/device/timeline.py --out "$OUT" --variants "${VARIANTS:-shipped,$A,shipped,$A}" \
  --timeline "${TL:-gate_up:VARIANT=7}" 2> "$OUT/timeline.log" | tee "$OUT/timeline.txt" | grep -v "^ "
echo "rc=${PIPESTATUS[0]}"; tail -2 "$OUT/timeline.log"
step "glue trigger: wait / first, alternating processes"
for i in 1 2; do for g in wait first; do
  TURBOPACK_GLUE_TRIGGER=$g timeout 60 python3 benchmarks/device/timeline.py --variants shipped --timeline none \
    --label "glue-$g" 2>> "$OUT/glue.log" | grep "ms$"
done; done
step done
