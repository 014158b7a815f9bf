#!/usr/bin/env bash
# v7's L2 prefetch (PREFETCH, csrc/w4_v67.cuh), first device run:
# - build, and the decode kernel's GPU tests (the prefetch's identical bits with and without PDL;
#   v6/v7/v8 against v5);
# - the W4A16 tuner at M = 1, 8, 16, v7 with and without PREFETCH beside the rest. PDL is off there,
#   so the prefetch only puts a CTA's slice in flight. M = 16 because ptxas re-scheduled v7's
#   two-column loop when PREFETCH went in;
# - the 8B W4A16 end to end twice: with the tuned table, and with PREFETCH forced on every v7 entry
#   (what PDL adds: the slice streams while the glue kernel before runs).
# Tables and logs in one tarball; < 560 s.
source benchmarks/device/lib.sh
export BUILD_S=${BUILD_S:-170}
step build; build_libs cuda_w4 cuda_w4mm cuda_w4wg
step tests
timeout ${TESTS_S:-100} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/inference/kernels/test_cuda_build.py \
  -k "prefetch or v6_v7 or long_stripes" > "$OUT/tests.txt" 2>&1
RC=$?; echo "pytest rc=$RC"; grep -E "FAILED|Error|passed|failed" "$OUT/tests.txt" | head -8
step tune
[ "$RC" = 0 ] && timeout ${BENCH_S:-150} python3 benchmarks/bench_linear.py --tune --jobs 15 --formats w4a16 \
  --ms ${MS:-1,8,16} --out "$OUT" 2>"$OUT/tune.log" | tee "$OUT/tune.txt" | grep -E "M=|PASS|MISS"; tail -1 "$OUT/tune.log"
[ -s "$OUT/sm90.json" ] && cp "$OUT/sm90.json" turbopack/inference/kernels/configs/sm90.json
[ -s "$OUT/bench.json" ] && python3 - "$OUT/bench.json" <<'PY' | tee "$OUT/prefetch_ab.txt"
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:  # best v7 with and without PREFETCH per (shape, M)
    best = {}
    for t, cfg in [(r["us"], r["cfg"])] + [tuple(x) for x in r.get("runner_up", [])]:
        if cfg.get("VARIANT") == 2:
            key = bool(cfg.get("PREFETCH"))
            best[key] = min(best.get(key, 1e9), t)
    print(r["shape"], r["m"], "winner", round(r["us"], 2), r["cfg"], "| v7", best.get(False), "| v7+prefetch", best.get(True))
PY
step "e2e, tuned table"
timeout ${E2E_S:-120} python3 benchmarks/bench_e2e.py --e2e --formats w4a16 --out "$OUT/e2e_tuned" \
  2>"$OUT/e2e_tuned.log" | grep -E "^\| (bf16|w4a16)|bar" | head -4
step "e2e, PREFETCH on every v7 entry"
python3 - <<'PY'
import json, pathlib
p = pathlib.Path("turbopack/inference/kernels/configs/sm90.json")
d = json.loads(p.read_text())
for layout in d["layouts"].values():
    for buckets in [layout["default"], *layout["shapes"].values()]:
        for cfg in buckets.values():
            if cfg.get("kernel") == "cuda" and cfg.get("VARIANT") == 2:
                cfg["PREFETCH"] = True
p.write_text(json.dumps(d, indent=1))
PY
timeout ${E2E_S:-120} python3 benchmarks/bench_e2e.py --e2e --formats w4a16 --out "$OUT/e2e_prefetch" \
  2>"$OUT/e2e_prefetch.log" | grep -E "^\| (bf16|w4a16)|bar" | head -4
tar czf /tmp/all.tgz -C "$OUT" . && find "$OUT" -mindepth 1 -delete && mv /tmp/all.tgz "$OUT/"
step done
