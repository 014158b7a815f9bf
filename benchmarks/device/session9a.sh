#!/usr/bin/env bash
# Run 9's first call: the whole -m gpu suite on run 8's final tree (two pytest processes side by
# side, as suite.sh; check's GPU rows included), then the W4A16 tuner at the batch-8 and batch-32
# decode M (8 and 32: today both fall into the M = 16 / M = 64 buckets, which were tuned at 16 and
# 64). Winners merged into $OUT/sm90.json. One tarball of logs under $OUT; < 590 s.
source benchmarks/device/lib.sh
export BUILD_S=${BUILD_S:-170}
step build; build_libs
step gpu-tests
timeout ${TESTS_S:-270} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/cli > "$OUT/gpu_tests_cli.txt" 2>&1 &
A=$!
timeout ${TESTS_S:-270} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests --ignore=tests/cli \
  > "$OUT/gpu_tests_rest.txt" 2>&1
echo "tests (all but tests/cli) rc=$?"; wait $A; echo "tests/cli rc=$?"
for f in rest cli; do grep -E "FAILED|^ERROR|passed|failed" "$OUT/gpu_tests_$f.txt" | tail -12; done
step "tune w4a16 M=${MS:-8,32}"
timeout ${BENCH_S:-120} python3 benchmarks/bench_linear.py --tune --jobs 15 --formats w4a16 --ms ${MS:-8,32} \
  --out "$OUT" 2>"$OUT/tune.log" | tee "$OUT/tune.txt" | grep -E "M=|PASS|MISS"; tail -2 "$OUT/tune.log"
tar czf /tmp/all.tgz -C "$OUT" . && find "$OUT" -mindepth 1 -delete && mv /tmp/all.tgz "$OUT/"
step done
