#!/usr/bin/env bash
# The warpgroup-MMA W4 kernel with its weights straight to registers (cuda_wg WREG, csrc/w4_wgmma.cu),
# first device run (run 10):
# - build, and its GPU tests (the reference, one-hot tokens bit for bit, determinism, dispatch and a
#   graph, with and without WREG);
# - the W4A16 tuner at M = 64, 256 (cuda_wg offered with and without WREG beside the rest), and
#   per (shape, M) the best cuda_wg of each kind;
# - v7's L2 prefetch (PREFETCH, csrc/w4_v67.cuh): its GPU tests, and the 8B W4A16 decode step with
#   the shipped table and with PREFETCH on every v7 entry (prefetch_ab.py);
# - ncu of the WREG kernel at gate_up M = 256 (run 9's ncu of the ring version: shared memory 77%).
# Tables and logs in one tarball; < 570 s.
source benchmarks/device/lib.sh
export BUILD_S=${BUILD_S:-170}
step build; build_libs cuda_w4 cuda_w4mm cuda_w4wg
step tests
timeout ${TESTS_S:-200} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore tests/inference/kernels/test_cuda_w4wg.py \
  tests/inference/kernels/test_cuda_build.py -k "wgmma or wg or prefetch or v6_v7 or long_stripes" > "$OUT/tests.txt" 2>&1
RC=$?; echo "pytest rc=$RC"; grep -E "FAILED|^ERROR|passed|failed" "$OUT/tests.txt" | tail -8
step tune
[ "$RC" = 0 ] && timeout ${BENCH_S:-150} python3 benchmarks/bench_linear.py --tune --jobs 15 --formats w4a16 \
  --ms ${MS:-64,256} --out "$OUT" 2>"$OUT/tune.log" | tee "$OUT/tune.txt" | grep -E "M=|PASS|MISS"; tail -1 "$OUT/tune.log"
[ -s "$OUT/bench.json" ] && python3 - "$OUT/bench.json" <<'PY' | tee "$OUT/wreg_ab.txt"
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:  # best cuda_wg with and without WREG per (shape, M)
    best = {}
    for t, cfg in [(r["us"], r["cfg"])] + [tuple(x) for x in r.get("runner_up", [])]:
        if cfg.get("kernel") == "cuda_wg":
            key = bool(cfg.get("WREG"))
            best[key] = min(best.get(key, 1e9), t)
    print(r["shape"], r["m"], "winner", round(r["us"], 2), r["cfg"], "| ring", best.get(False), "| wreg", best.get(True))
PY
step "prefetch A/B, 8B W4A16 step"
[ "$RC" = 0 ] && timeout ${PREF_S:-110} python3 benchmarks/device/prefetch_ab.py > "$OUT/prefetch_ab.txt" 2>&1
echo "rc=$?"; grep -E "batch|Error" "$OUT/prefetch_ab.txt" | tail -5
SECTIONS="--section SpeedOfLight --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis"
KEYS="Duration|DRAM Throughput|L1/TEX Cache Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Issue Slots"
step "ncu gate_up M=256, WREG"
timeout 60 ncu --clock-control none --kernel-name regex:w4_wgmma --launch-skip 3 --launch-count 1 $SECTIONS \
  python3 benchmarks/ncu_linear.py --format w4a16 --shape gate_up --m 256 \
  --cfg '{"kernel": "cuda_wg", "BN": 128, "BM": 64, "SPLIT_K": 1, "STAGES": 4, "WREG": true}' \
  > "$OUT/ncu_wreg256.txt" 2>&1
echo "rc=$?"; grep -E "$KEYS" "$OUT/ncu_wreg256.txt" | head -16
tar czf /tmp/all.tgz -C "$OUT" . && find "$OUT" -mindepth 1 -delete && mv /tmp/all.tgz "$OUT/"
step done
