#!/usr/bin/env bash
# One device call for the user path (#10): the whole -m gpu suite (README commands included),
# `turbopack check` as a user runs it, cold/warm time to first token, calibration timings.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TRITON_CACHE_DIR=/tmp/triton-cache
STEPS=${STEPS:-"startup check gpu-tests calibration"}
step() { echo "=== $1 [$(date +%T)]"; }
want() { [[ " $STEPS " == *" $1 "* ]]; }
tp() { python3 -m turbopack "$@"; }
want startup && { step startup; rm -rf ~/.cache/turbopack /tmp/triton-cache
M=turbopack/assets/tiny-llama; W=/tmp/w; rm -rf $W
tp quantize $M -o $W/q --format w4a16 --group-size 64 2>/dev/null && tp pack $W/q --arch sm90 -o $W/p 2>/dev/null
for kind in cold warm; do s=$(date +%s.%N); tp run $W/p --prompt "ROMEO:" --max-new-tokens 1 >/dev/null 2>&1; echo "$kind: $(python3 -c "print(round($(date +%s.%N) - $s, 2))") s (whole command)"; done; }
want check && { step check; timeout ${CHECK_S:-240} python3 -m turbopack check > "$OUT/check.txt" 2>"$OUT/check.err"; echo "rc=$?"; cat "$OUT/check.txt"; }
want gpu-tests && { step gpu-tests; timeout ${TESTS_S:-240} python3 -m pytest -q -m gpu tests -p no:cacheprovider -x --deselect tests/cli/test_gpu_readme.py::test_check_with_no_argument_has_passing_gpu_rows > "$OUT/gpu_tests.txt" 2>&1; echo "rc=$?"; tail -8 "$OUT/gpu_tests.txt"; }
want calibration && { step calibration; timeout ${CALIB_S:-200} python3 benchmarks/calibration_gpu.py --layers ${CALIB_LAYERS:-1} --out "$OUT" 2>"$OUT/calib.log"; tail -3 "$OUT/calib.log"; }
step done
