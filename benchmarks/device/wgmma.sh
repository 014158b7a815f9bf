#!/usr/bin/env bash
# Run 9's wgmma call: build the W4 libraries (w4_wgmma.cu is new), the GPU tests of the warpgroup-MMA
# kernel and of the multi-column kernel (its shared parts moved to w4_mma.cuh), a one-hot probe that
# says which k / rows go wrong if any, then the W4A16 tuner at M = 32, 64, 256, 2048 with the new
# candidates beside cuda_mm, dq_mm and Triton (winners merged into $OUT/sm90.json)
# (tuner only when the tests pass: a broken kernel would take the tuner's process down). One tarball under $OUT; < 560 s.
source benchmarks/device/lib.sh
export BUILD_S=${BUILD_S:-170}
step build; build_libs cuda_w4 cuda_w4mm cuda_w4wg
step tests
timeout ${TESTS_S:-150} python3 -m pytest -q -m gpu -p no:cacheprovider -W ignore -x \
  tests/inference/kernels/test_cuda_w4wg.py tests/inference/kernels/test_cuda_w4mm.py > "$OUT/tests.txt" 2>&1
RC=$?; echo "pytest rc=$RC"; grep -E "FAILED|Error|assert|passed|failed" "$OUT/tests.txt" | head -12
step probe
timeout 60 python3 - <<'PY' 2>&1 | tee "$OUT/probe.txt"
import torch
from turbopack.formats import get_format
from turbopack.inference.kernels import cuda_w4wg, reference
torch.manual_seed(0)
n, k = 128, 256
fmt = get_format("w4a16", group_size=128, sym=False, scale_dtype="bfloat16")
q = fmt.quantize(torch.randn(n, k, device="cuda"))
w16 = reference.w4_weight16(q, torch.bfloat16)
packed = reference.pack_w4(q, 64)
for bn, bm in ((64, 32), (64, 64), (128, 64), (64, 128)):
    m = bm
    ks = torch.arange(m, device="cuda") * (k // m) % k
    x = torch.zeros(m, k, device="cuda", dtype=torch.bfloat16)
    x[torch.arange(m, device="cuda"), ks] = 1
    y = cuda_w4wg.w4_wgmma(x, packed, (n, k), None, group=128, bn=bn, bm=bm, stages=3, split_k=1)
    want = w16[:, ks].T
    bad = (y != want).nonzero()
    print(f"BN={bn} BM={bm}: {len(bad)} of {y.numel()} wrong; rel {reference.rel_err(y, want):.2e}")
    for t, r in bad[:6].tolist():  # which weight column does y[t, r] hold instead?
        hit = (w16[r] == y[t, r]).nonzero().flatten().tolist()[:4]
        print(f"  token {t} (k={ks[t].item()}) row {r}: got {y[t, r].item():.4g} want {want[t, r].item():.4g}; "
              f"equals W16[{r}, k] at k in {hit}")
PY
step tune
[ "$RC" = 0 ] || [ -n "${FORCE_TUNE:-}" ] && timeout ${BENCH_S:-230} python3 benchmarks/bench_linear.py --tune --jobs 15 --formats w4a16 --ms ${MS:-32,64,256,2048} \
  --out "$OUT" 2>"$OUT/tune.log" | tee "$OUT/tune.txt" | grep -E "M=|PASS|MISS"; tail -2 "$OUT/tune.log"
[ -s "$OUT/bench.json" ] && python3 - "$OUT/bench.json" <<'PY' | tee "$OUT/wg_best.txt"
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
for r in rows:  # the best cuda_wg and cuda_mm per (shape, M), beside the winner
    b = r.get("best_by_kernel", {})
    print(r["shape"], r["m"], "win", round(r.get("us", 0), 1), r.get("cfg", {}).get("kernel"),
          "| wg", b.get("cuda_wg"), "| mm", (b.get("cuda_mm") or [None])[0], "| dq", (b.get("dq_mm") or [None])[0],
          "| peers", {p: round(v, 1) if isinstance(v, float) else v for p, v in r.get("peers", {}).items()})
PY
tar czf /tmp/all.tgz -C "$OUT" . && find "$OUT" -mindepth 1 -delete && mv /tmp/all.tgz "$OUT/"
step done
