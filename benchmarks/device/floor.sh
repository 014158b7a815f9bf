#!/usr/bin/env bash
# Where the batch-1 time goes, in one call: the floor of one launch per byte count (sol.py: what
# any kernel streaming a layer's bytes takes, launch and tail included; and the MoE's two launches
# with and without PDL), then the knockout builds (knockout.py: the real kernels with the store,
# the math, the weight copies, every copy, or all but the skeleton left out), then run 12's one
# unexplained failure three times (the 8-bit decode at split 3, M = 9, fp8 row-major). Carry
# .scratch/knockout.tar.xz (knockout.py --offline .scratch/knockout, ~8 min on the CPU machine)
# and .scratch/prebuilt.tar.xz (build_libs.py --offline .scratch/prebuilt 9.0) for w8.cu.
#   bash benchmarks/device/floor.sh
source benchmarks/device/lib.sh
step "sol.py"
timeout ${SOL_S:-140} python3 benchmarks/device/sol.py --json "$OUT/sol.json" 2> "$OUT/sol.log"; echo "rc=$?"
tail -2 "$OUT/sol.log"
step "knockout.py"
timeout ${KO_S:-360} python3 benchmarks/device/knockout.py --libs .scratch/knockout.tar.xz --out "$OUT/ko.json" \
  2> "$OUT/ko.log"; echo "rc=$?"; tail -2 "$OUT/ko.log"
step "w8 decode, split 3, M = 9, three times"
build_libs cuda_w8 2>&1 | tail -1
for i in 1 2 3; do
  timeout 60 python3 -m pytest -o addopts= -q -rf --tb=line -m gpu -p no:cacheprovider -W ignore \
    tests/inference/kernels/test_cuda_w8.py -k "test_decode_matches_the_weights_only_reference and 3-6-9" 2>&1 \
    | grep -E "passed|failed|Error|assert" | tail -3
done
step done
