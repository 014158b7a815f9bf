#!/usr/bin/env bash
# Run 35's first call: the checks that did not run on run 34's tree (its dispatch changed: STREAM,
# W8A16 and FP8 on cuda_ws in the table), then the 8B end to end on the shipped table, in one call
# (run 33 took 208 s + 262 s for the same three parts in two). Each part writes into its own folder;
# one archive comes back ($OUT/all.tar.xz: a call returns at most 8 files). Carry
# .scratch/prebuilt.tar.xz.
source benchmarks/device/lib.sh
FINAL=$OUT; nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
OUT=$FINAL/rest TESTS_S=260 bash benchmarks/device/suite.sh
OUT=$FINAL/cli TESTS_S=240 PART=cli bash benchmarks/device/suite.sh
left=$((570 - SECONDS)); [ $left -gt 200 ] && left=200
OUT=$FINAL/e2e E2E_S=$left PART=e2e bash benchmarks/device/tune.sh
archive_parts "$FINAL" rest cli e2e
