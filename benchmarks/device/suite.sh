#!/usr/bin/env bash
# The whole -m gpu suite (#10's bar) in two device calls: the README CLI tests (tests/cli: ~55 s of
# child processes per test, ~8 minutes in all) do not fit in one call beside the rest, and run 9
# found them starved when they shared the GPU and the CPU with it (7 of 12 in 270 s).
#   bash benchmarks/device/suite.sh              # all but tests/cli, then the calibration table
#   PART=cli bash benchmarks/device/suite.sh     # tests/cli alone (check's GPU rows, the Python API)
#   PART=cli K="w4a16 or check_with" bash benchmarks/device/suite.sh   # some of them (pytest -k)
# The calibration table (calibration_gpu.py --layers 1: time and peak GPU memory per method against
# the 3.02 GB bar) runs on a quiet GPU after the tests. Logs under $OUT; under 560 s.
source benchmarks/device/lib.sh
export BUILD_S=${BUILD_S:-170}
step build; build_libs
if [ "${PART:-rest}" = cli ]; then
  step tests/cli
  timeout ${TESTS_S:-380} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore -rA tests/cli ${K:+-k "$K"} \
    > "$OUT/gpu_tests_cli.txt" 2>&1
  echo "tests/cli rc=$?"; grep -E "^PASSED|^FAILED|^ERROR|passed|failed" "$OUT/gpu_tests_cli.txt" | tail -14
  step done; exit 0
fi
step gpu-tests
timeout ${TESTS_S:-300} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests --ignore=tests/cli \
  > "$OUT/gpu_tests_rest.txt" 2>&1
echo "tests (all but tests/cli) rc=$?"; grep -E "FAILED|^ERROR|passed|failed" "$OUT/gpu_tests_rest.txt" | tail -8
tail -4 "$OUT/gpu_tests_rest.txt"
step "calibration_gpu --layers 1"
timeout ${CALIB_S:-100} python3 benchmarks/calibration_gpu.py --layers 1 \
  --methods ${CALIB_METHODS:-gptq,gptq-no-act-order,awq,smoothquant} --out "$OUT" 2> "$OUT/calibration_gpu.log" \
  | tee "$OUT/calibration_gpu.txt"
echo "rc=${PIPESTATUS[0]}"; grep -E "Error|error" "$OUT/calibration_gpu.log" | tail -4
step done
