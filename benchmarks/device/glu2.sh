#!/usr/bin/env bash
# The GLU's warps per family (glu_rows.py: gate_up + act_mul against the GLU in 4-16 warps at M = $MS)
# and the W4A16 step of the other families' shapes with the GLU on and off (glu_ab.py --shape; Gemma 2:
# GeLU-tanh). Carry .scratch/prebuilt.tar.xz; < 300 s.
#   bash benchmarks/device/glu2.sh
source benchmarks/device/lib.sh
step build; build_libs > "$OUT/build.log" 2>&1; tail -1 "$OUT/build.log"
step "GLU by warps"
timeout ${ROWS_S:-150} python3 benchmarks/device/glu_rows.py --ms ${MS:-1,4,8,12,16} 2> "$OUT/rows.log" | tee "$OUT/glu_rows.md"
grep -E "REJECTED|Error|Traceback" "$OUT/rows.log" | head -5
for shape in ${SHAPES:-qwen3-8b gemma2-9b phi4-mini}; do
  step "$shape step"
  timeout ${AB_S:-60} python3 benchmarks/device/glu_ab.py --shape $shape --only "default,no GLU" --prompts 32 \
    2> "$OUT/ab_$shape.log" | grep -E "batch"; grep -iE "error|Traceback" "$OUT/ab_$shape.log" | head -3
done
step done
