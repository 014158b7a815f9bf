#!/usr/bin/env bash
# Run 35's second call: the W4A16 tuner at every M on this tree (run 34 re-tuned only M = 64 and 256
# and not down; stream-K is a candidate from M = 64), after the warp-specialized kernels' GPU tests,
# then run34b.sh's ncu of qkv at M = 256 (stream-K beside split 2) and o at 256 with what is left.
# $OUT/sm90.json: the table; the rest in $OUT/all.tar.xz. Carry .scratch/prebuilt.tar.xz.
source benchmarks/device/lib.sh
FINAL=$OUT
OUT=$FINAL/tune WS_TESTS=1 FORMATS=w4a16 TUNE_S=${TUNE_S:-400} bash benchmarks/device/tune.sh
[ -f "$FINAL/tune/sm90.json" ] && mv "$FINAL/tune/sm90.json" "$FINAL/"
[ $((590 - SECONDS)) -gt 120 ] && OUT=$FINAL/ncu NCU_S=$(((570 - SECONDS) / 3)) bash benchmarks/device/run34b.sh
archive_parts "$FINAL" tune $([ -d "$FINAL/ncu" ] && echo ncu)
