#!/usr/bin/env bash
# A short device call on the final tree: the README's CLI tests (tests/cli, -m gpu: `turbopack check`
# with its GPU rows, the quantize -> pack -> run path per format, default flags) beside the runtime's
# PDL token test (PDL off / the default, Triton linears included / without them: the same tokens
# for every format). Logs under $OUT; < 300 s.
source benchmarks/device/lib.sh
step build; BUILD_S=${BUILD_S:-120} build_libs cuda_w4 cuda_w4mm cuda_w8
step tests
timeout ${TESTS_S:-150} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/cli > "$OUT/cli.txt" 2>&1 &
A=$!
timeout ${TESTS_S:-150} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore \
  "tests/inference/test_runtime.py::test_pdl_on_and_off_decode_the_same" > "$OUT/pdl.txt" 2>&1
echo "pdl tokens rc=$?"; wait $A; echo "tests/cli rc=$?"
for f in pdl cli; do grep -E "FAILED|^ERROR|passed|failed" "$OUT/$f.txt" | tail -6; tail -2 "$OUT/$f.txt"; done
step done
