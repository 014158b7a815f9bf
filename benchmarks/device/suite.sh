#!/usr/bin/env bash
# The whole -m gpu suite on one device call (#10's bar), in two pytest processes side by side (the
# README CLI tests, each a dozen ~4.5 s CLI processes, are CPU-bound; the rest is GPU-bound), then
# the calibration table (calibration_gpu.py --layers 1: time and peak GPU memory per method against
# the 3.02 GB bar) on a quiet GPU. Logs under $OUT; under 560 s.
source benchmarks/device/lib.sh
step build; build_libs cuda_w4 cuda_fp4 cuda_w8
step gpu-tests
timeout ${TESTS_S:-330} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/cli > "$OUT/gpu_tests_cli.txt" 2>&1 &
A=$!
timeout ${TESTS_S:-330} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests --ignore=tests/cli \
  > "$OUT/gpu_tests_rest.txt" 2>&1
echo "tests (all but tests/cli) rc=$?"; wait $A; echo "tests/cli rc=$?"
for f in rest cli; do grep -E "FAILED|^ERROR|passed|failed" "$OUT/gpu_tests_$f.txt" | tail -8; tail -4 "$OUT/gpu_tests_$f.txt"; done
step "calibration_gpu --layers 1"
timeout ${CALIB_S:-170} python3 benchmarks/calibration_gpu.py --layers 1 \
  --methods ${CALIB_METHODS:-gptq,gptq-no-act-order,awq,smoothquant} --out "$OUT" 2> "$OUT/calibration_gpu.log" \
  | tee "$OUT/calibration_gpu.txt"
echo "rc=${PIPESTATUS[0]}"; grep -E "Error|error" "$OUT/calibration_gpu.log" | tail -4
step done
