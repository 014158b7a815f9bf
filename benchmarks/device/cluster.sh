#!/usr/bin/env bash
# The dense decode's cluster split-K store (CLUSTER: a row tile's split-K CTAs as one thread-block
# cluster, csrc/common.cuh cluster_sum) against the global path, in one call: the GPU tests of the
# cluster paths (pytest -v, so a timeout still names each test's outcome), the tuner at M = 1 and
# 8 (CLUSTER candidates compete; every valid candidate's time in bench.json's "tried"), an A/B
# table of the best with and without CLUSTER per shape, then the 8B step (bf16 beside) on the
# shipped table and on the tuned one, each in its own process. Logs under $OUT (one tarball);
# < 560 s when the call carries every library (build_libs.py --offline .scratch/prebuilt 9.0:
# run 12 lost 146 s of its tuner budget building the wgmma library it had not carried).
#   bash benchmarks/device/cluster.sh                       # W4A16 (v7's CLUSTER)
#   FORMATS=w8a16,fp8 bash benchmarks/device/cluster.sh     # the 8-bit decode's CLUSTER
source benchmarks/device/lib.sh
export BUILD_S=${BUILD_S:-170}
FORMATS=${FORMATS:-w4a16}
step build; build_libs > "$OUT/build.log" 2>&1; tail -1 "$OUT/build.log"
step tests; timeout ${TESTS_S:-120} python3 -m pytest -o addopts= -v -rf --tb=short -o faulthandler_timeout=30 \
  -m gpu -p no:cacheprovider -W ignore tests/inference/kernels/test_cuda_build.py \
  tests/inference/kernels/test_cuda_w8.py -k cluster > "$OUT/tests.txt" 2>&1
echo "pytest rc=$?"; grep -cE " PASSED" "$OUT/tests.txt"; grep -E " FAILED|Timeout|passed|failed" "$OUT/tests.txt" | tail -8
step "tune $FORMATS M=1,8"
mkdir -p "$OUT/tune"
timeout ${BENCH_S:-240} python3 benchmarks/bench_linear.py --tune --jobs 15 --formats $FORMATS --ms 1,8 \
  --out "$OUT/tune" 2> "$OUT/tune.log" | tee "$OUT/tune.txt" | grep -E "M=|PASS|MISS"; tail -1 "$OUT/tune.log"
[ -s "$OUT/tune/bench.json" ] && python3 - "$OUT/tune/bench.json" <<'EOF'
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:
    tried = r.get("tried", [])
    on = min((t for t, c in tried if c.get("CLUSTER")), default=None)
    off = min((t for t, c in tried if not c.get("CLUSTER")), default=None)
    ratio = f"{off / on:.3f}x" if on and off else "-"
    print(f"{r['setup']} {r['shape'][0]}x{r['shape'][1]} M={r['m']}: best without {off} us, with CLUSTER {on} us ({ratio}); "
          f"winner {r.get('cfg')}")
EOF
step "e2e: shipped table, then the tuned one"
timeout ${E2E_S:-70} python3 benchmarks/bench_e2e.py --e2e --quick --formats bf16,$FORMATS --out "$OUT/e2e_shipped" \
  2> "$OUT/e2e_shipped.log" | grep -E "^\| (bf16|w4a16|w8a16|fp8)" | tee "$OUT/e2e_shipped.txt"
if [ -s "$OUT/tune/sm90.json" ]; then
  cp "$OUT/tune/sm90.json" turbopack/inference/kernels/configs/sm90.json
  timeout ${E2E_S:-70} python3 benchmarks/bench_e2e.py --e2e --quick --formats $FORMATS --out "$OUT/e2e_tuned" \
    2> "$OUT/e2e_tuned.log" | grep -E "^\| (w4a16|w8a16|fp8)" | tee "$OUT/e2e_tuned.txt"
fi
tar czf /tmp/all.tgz -C "$OUT" . && find "$OUT" -mindepth 1 -delete && mv /tmp/all.tgz "$OUT/"
step done
