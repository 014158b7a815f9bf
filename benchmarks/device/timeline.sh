#!/usr/bin/env bash
# Run 21's first call: the 8B W4A16 step's kernel timeline (timeline.py: CUPTI, one graph replay)
# with the shipped table, the step under 16-warp variants of the small layers (all their stages
# issued before pdl_wait), and the glue kernels triggering the next grid before their wait
# (TURBOPACK_GLUE_TRIGGER=first, a process of its own: read when the Triton kernels are defined).
# Logs and timelines under $OUT; VARIANTS and GLUE_VARIANTS override the lists. The glue switch was
# removed after the run (no difference past the drift: docs/benchmarks.md, run 21), so its second
# process now times the default again. Kept as the record of how call 1 was measured.
source benchmarks/device/lib.sh
step build; build_libs cuda_w4
step "timeline, variants"
timeout ${TL_S:-240} python3 benchmarks/device/timeline.py --out "$OUT" \
  --variants "${VARIANTS:-shipped,qkv:SPLIT_K=16,o:SPLIT_K=16,qkv:SPLIT_K=16+o:SPLIT_K=16,down:SPLIT_K=16}" 2> "$OUT/timeline.log" | tee "$OUT/timeline.txt"
echo "rc=${PIPESTATUS[0]}"; tail -3 "$OUT/timeline.log"
step "glue triggers first"
TURBOPACK_GLUE_TRIGGER=first timeout ${GLUE_S:-150} python3 benchmarks/device/timeline.py --out "$OUT" \
  --label glue-first --variants "${GLUE_VARIANTS:-shipped}" 2> "$OUT/glue_first.log" | tee "$OUT/glue_first.txt"
echo "rc=${PIPESTATUS[0]}"; tail -3 "$OUT/glue_first.log"
step done
