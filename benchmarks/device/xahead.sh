#!/usr/bin/env bash
# v7 changes staged as patches (benchmarks/device/patches/), A/B'd in one call before any goes into
# csrc/w4_v67.cuh:
#   a = the tree's v7;
#   b = a + v7_x_ahead.patch: x one stage ahead in two register sets, the loop unrolled by two (x is
#       an L2 hit, waited on ~40 instructions after its loads); 80 registers at one token column,
#       group 128 (64 spills), the compiler's ~128 at two; 152.5 SASS instructions a stage (a: 147);
#   c = b + v7_two_chains.patch: two accumulator chains per stage, not one 8-MMA chain;
#   d = b + v7_constant_slots.patch: the loop unrolled by STAGES, so ring slots are constants
#       (143.5 instructions a stage; 80 registers at group 64 too).
# Run 10 passed b's GPU tests. Here: b, c, d's v7 tests; one warm-up step (the glue kernels' Triton
# compiles; run 10 lost its timings to them), then the 8B W4A16 step (batch 1 and 8, shipped table)
# for a b c d twice in turn, each in its own process. Then, with TUNE=1, the tuner at M = 1, 8 per
# side. First, on the CPU machine, build every side's library (and the others) offline:
#   PREBUILD=1 PYTHON=.venv/bin/python bash benchmarks/device/xahead.sh   # ~12 min on two cores
# then run it on the device carrying .scratch (a library built there takes 90 s). Output goes to
# files as it comes (a timeout keeps what ran). < 560 s. Then, with SHIP=<the winning side>, the
# next call tunes that side's kernel and times it end to end (decode_v7.sh).
source benchmarks/device/lib.sh
H=turbopack/inference/kernels/csrc/w4_v67.cuh
P=benchmarks/device/patches
cp $H /tmp/a.cuh
patched() {  # put side $1's header in place
  cp /tmp/a.cuh $H
  [ "$1" != a ] && patch -s -p1 < $P/v7_x_ahead.patch
  [ "$1" = c ] && patch -s -p1 < $P/v7_two_chains.patch
  [ "$1" = d ] && patch -s -p1 < $P/v7_constant_slots.patch
  return 0
}
# and seed its library: only w4.cu includes w4_v67.cuh, so the other libraries keep a's keys
side() { patched $1; build_libs cuda_w4 >> "$OUT/build.log" 2>&1; }
if [ "${PREBUILD:-0}" = 1 ]; then
  for s in a b c d; do
    patched $s
    ${PYTHON:-python3} benchmarks/device/build_libs.py --offline "$PREBUILT" 9.0 $([ $s = a ] || echo cuda_w4)
  done
  cp /tmp/a.cuh $H
  exit 0
fi
if [ -n "${SHIP:-}" ]; then  # SHIP=b|c|d: that side as the tree's v7, through decode_v7.sh (its tests,
  patched a; build_libs >> "$OUT/build.log" 2>&1  # the tuner at M <= 16, ncu, the 8B end to end)
  patched "$SHIP"; MS=${MS:-1,8,16} exec bash benchmarks/device/decode_v7.sh
fi
stepms() {  # the 8B W4A16 step of side $1 (prefetch_ab.py, shipped table), lines into step.txt
  timeout ${2:-90} python3 benchmarks/device/prefetch_ab.py --tables table 2>> "$OUT/step.log" \
    | grep batch | sed "s/^table */$1 /" >> "$OUT/step.txt"
  tail -2 "$OUT/step.txt"
}
step "libraries"
patched a; build_libs >> "$OUT/build.log" 2>&1; tail -1 "$OUT/build.log"
step "tests (b, c, d)"
for s in b c d; do
  side $s
  timeout ${TESTS_S:-45} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/inference/kernels/test_cuda_build.py \
    -k "decode_kernel_matches or v6_v7" > "$OUT/tests_$s.txt" 2>&1
  echo "$s pytest rc=$?"; grep -E "FAILED" "$OUT/tests_$s.txt" | head -4
done
step "8B W4A16 step: warm-up, then a b c d twice"
side a; stepms warm 240
for s in a b c d a b c d; do side $s; stepms $s; done
if [ "${TUNE:-0}" = 1 ]; then
  for s in a b c d; do
    side $s
    step "tune ($s)"
    timeout ${BENCH_S:-90} python3 benchmarks/bench_linear.py --tune --jobs 15 --formats w4a16 --ms ${MS:-1,8} \
      --out "$OUT/$s" 2>"$OUT/tune_$s.log" > "$OUT/tune_$s.txt"
    grep -E "M=" "$OUT/tune_$s.txt" | cut -c1-120
  done
fi
cp /tmp/a.cuh $H
tar czf /tmp/all.tgz -C "$OUT" . && find "$OUT" -mindepth 1 -delete && mv /tmp/all.tgz "$OUT/"
step done
