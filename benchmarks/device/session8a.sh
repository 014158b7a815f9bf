#!/usr/bin/env bash
# Session 8's first device call: the ncu profiles (profile.sh), then the Triton linears in the PDL
# chain (TURBOPACK_PDL=all): the GPU token test off / on / all, and bench_e2e's A/B for the formats
# whose decode runs Triton linears (w8a16's small layers, all of w8a8). Logs under $OUT; under 560 s.
source benchmarks/device/lib.sh
bash benchmarks/device/profile.sh
step "pdl tokens"; timeout 90 python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore \
  "tests/inference/test_runtime.py::test_pdl_on_and_off_decode_the_same" > "$OUT/pdl_tests.txt" 2>&1
echo "pytest rc=$?"; grep -E "FAILED|^ERROR|passed|failed" "$OUT/pdl_tests.txt" | tail -5
step e2e; timeout 150 python3 benchmarks/bench_e2e.py --e2e --formats w8a16,w8a8 --out "$OUT" 2>"$OUT/e2e.log" \
  | tee "$OUT/e2e.txt" | grep -E "Programmatic" -A6; tail -2 "$OUT/e2e.log"
step done
