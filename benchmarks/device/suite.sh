#!/usr/bin/env bash
# The whole -m gpu suite (#10's bar) in two device calls: the README CLI tests (tests/cli: ~55 s of
# child processes per test, ~8 minutes in one process, so JOBS=3 processes) do not fit in one call
# beside the rest, and run 9 found them starved when they shared the GPU and the CPU with it.
#   bash benchmarks/device/suite.sh              # all but tests/cli, then the calibration table
#   PART=cli bash benchmarks/device/suite.sh     # tests/cli alone (check's GPU rows, the Python API)
#   PART=cli K="w4a16 or check_with" bash benchmarks/device/suite.sh   # some of them (pytest -k)
# The calibration table (calibration_gpu.py --layers 1: time and peak GPU memory per method against
# the 3.02 GB bar) runs on a quiet GPU after the tests. Logs under $OUT; under 560 s.
source benchmarks/device/lib.sh
export BUILD_S=${BUILD_S:-170}
step build; build_libs
if [ "${PART:-rest}" = cli ]; then
  # JOBS pytest processes, tests dealt round-robin: each test is a chain of child processes
  # (import, CUDA context, a tiny model) that leaves most of the GPU and the 16 cores idle
  step "tests/cli in ${JOBS:=3} processes"
  python3 -m pytest -m gpu -p no:cacheprovider --collect-only tests/cli ${K:+-k "$K"} 2>/dev/null \
    | grep "::" > "$OUT/cli_ids.txt"
  for j in $(seq 0 $((JOBS - 1))); do
    mapfile -t ids < <(awk -v j=$j -v n=$JOBS 'NR % n == j' "$OUT/cli_ids.txt")
    [ ${#ids[@]} -gt 0 ] && timeout ${TESTS_S:-420} python3 -m pytest -m gpu -p no:cacheprovider -W ignore -rA "${ids[@]}" \
      > "$OUT/gpu_tests_cli_$j.txt" 2>&1 &
  done
  wait
  # one file (a call brings back at most 8) and one line per test: run 24's tail cut the ninth
  cat "$OUT"/gpu_tests_cli_*.txt > "$OUT/gpu_tests_cli.txt" && rm "$OUT"/gpu_tests_cli_*.txt
  grep -E "^PASSED|^FAILED|^ERROR" "$OUT/gpu_tests_cli.txt"
  echo "$(grep -cE "^PASSED" "$OUT/gpu_tests_cli.txt") of $(wc -l < "$OUT/cli_ids.txt") tests passed"
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
