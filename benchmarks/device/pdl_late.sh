#!/usr/bin/env bash
# Run 7's device call on PDL's trigger placement (kernels/pdl.py): the decode tokens with PDL off /
# on / late agree (GPU test), the 8B end to end for bf16 and W4A16 in every PDL mode (and the
# linears alone, back to back), and bench_linear's W4A16 M=1 table under each mode. The early
# trigger it compared against was removed after the run (the decode kernels now always trigger at
# their store), so `late` and `1` are the same mode today. Kept as the record of how run 7 was
# measured. Logs under $OUT; under 300 s.
source benchmarks/device/lib.sh
step build; build_libs cuda_w4 cuda_w4mm cuda_w8
step tests; timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore \
  "tests/inference/test_runtime.py::test_pdl_on_and_off_decode_the_same" > "$OUT/tests.txt" 2>&1
echo "pytest rc=$?"; grep -E "FAILED|^ERROR|passed|failed" "$OUT/tests.txt" | tail -5
step e2e; timeout 90 python3 benchmarks/bench_e2e.py --e2e --formats bf16,w4a16 --out "$OUT" 2>"$OUT/e2e.log" \
  | grep -E "^\| (bf16|w4a16) \||late trigger" -A3 | head -12; tail -1 "$OUT/e2e.log"
for mode in 0 1 late; do
  step "bench_linear w4a16 M=1, TURBOPACK_PDL=$mode"
  TURBOPACK_PDL=$mode timeout 40 python3 benchmarks/bench_linear.py --formats w4a16 --ms 1 --out "$OUT/lin_$mode" \
    2>"$OUT/lin_$mode.log" | grep -E "M=1 " | head -4
done
step done
