#!/usr/bin/env bash
# The two cluster reductions against the global split-K paths, in one call (built on the CPU machine,
# untimed until this script): v7's CLUSTER (a dense row tile's split-K CTAs as one thread-block
# cluster) and the grouped MoE's gate_up cluster (MoECudaConfig.cluster). Builds, the GPU tests of
# both (emulator/contract first), bench_moe's sweep at T = 1 and 64 (every 8-row candidate with
# a gate_up split of 2..8 with and without the cluster; at T = 1 also down's top-k cluster), the W4A16 tuner at M = 1 and 8 (CLUSTER
# candidates compete; every valid candidate's time in bench.json's "tried"), an A/B table of the
# best with and without a cluster per shape, then the 8B W4A16 step on the shipped table and on
# the tuned one (each in its own process). Logs under $OUT (one tarball); < 560 s.
#   bash benchmarks/device/cluster.sh          # carry .scratch/prebuilt (build_libs.py --offline)
#   FORMATS=w8a16,fp8 MOE=0 bash benchmarks/device/cluster.sh   # the 8-bit decode's CLUSTER instead
source benchmarks/device/lib.sh
export BUILD_S=${BUILD_S:-170}
FORMATS=${FORMATS:-w4a16}
step build; build_libs cuda_w4 cuda_moe cuda_w8 > "$OUT/build.log" 2>&1; tail -1 "$OUT/build.log"
step tests; timeout ${TESTS_S:-140} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore \
  tests/inference/kernels/test_cuda_build.py tests/inference/kernels/test_cuda_moe.py \
  tests/inference/kernels/test_cuda_w8.py \
  -k "cluster or decode_kernel_matches or v6_v7 or grouped or decode_matches" > "$OUT/tests.txt" 2>&1
echo "pytest rc=$?"; grep -E "FAILED|Error|passed|failed" "$OUT/tests.txt" | tail -8
[ "${MOE:-1}" = 1 ] && step "bench_moe --tokens 1,64" && timeout ${MOE_S:-120} python3 benchmarks/bench_moe.py --tokens 1,64 --no-triton-sweep --log "$OUT/moe_sweep.txt" \
  2> "$OUT/moe.log" | tee "$OUT/moe.txt" | head -12
[ -s "$OUT/moe_sweep.txt" ] && python3 - "$OUT/moe_sweep.txt" <<'EOF'
import re, sys
best = {}
t = None
for ln in open(sys.argv[1]):
    m = re.match(r"T=(\d+):", ln)
    if m:
        t = int(m.group(1))
    m = re.search(r"cuda (MoECudaConfig\(.*\)): rel err [^,]+, ([\d.]+) us", ln)
    if m and t is not None:
        key = (t, "cluster=True" in m.group(1) or "cluster_down=True" in m.group(1))
        best[key] = min(best.get(key, (1e9, "")), (float(m.group(2)), m.group(1)))
for t in sorted({k[0] for k in best}):
    off, on = best.get((t, False)), best.get((t, True))
    print(f"MoE T={t}: best without {off[0] if off else '-'} us, with cluster {on[0] if on else '-'} us"
          + (f" ({off[0] / on[0]:.3f}x)" if off and on else "") + (f"  {on[1]}" if on else ""))
EOF
step "tune $FORMATS M=1,8"
mkdir -p "$OUT/tune"
timeout ${BENCH_S:-170} python3 benchmarks/bench_linear.py --tune --jobs 15 --formats $FORMATS --ms 1,8 \
  --out "$OUT/tune" 2> "$OUT/tune.log" | tee "$OUT/tune.txt" | grep -E "M=|PASS|MISS"; tail -1 "$OUT/tune.log"
python3 - "$OUT/tune/bench.json" <<'EOF'
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
timeout ${E2E_S:-60} python3 benchmarks/bench_e2e.py --e2e --quick --formats $FORMATS --out "$OUT/e2e_shipped" \
  2> "$OUT/e2e_shipped.log" | grep -E "^\| (w4a16|w8a16|fp8)" | tee "$OUT/e2e_shipped.txt"
if [ -s "$OUT/tune/sm90.json" ]; then
  cp "$OUT/tune/sm90.json" turbopack/inference/kernels/configs/sm90.json
  timeout ${E2E_S:-60} python3 benchmarks/bench_e2e.py --e2e --quick --formats $FORMATS --out "$OUT/e2e_tuned" \
    2> "$OUT/e2e_tuned.log" | grep -E "^\| (w4a16|w8a16|fp8)" | tee "$OUT/e2e_tuned.txt"
fi
tar czf /tmp/all.tgz -C "$OUT" . && find "$OUT" -mindepth 1 -delete && mv /tmp/all.tgz "$OUT/"
step done
