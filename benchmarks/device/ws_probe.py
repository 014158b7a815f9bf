"""Run 30's probe of the warp-specialized W4A16 kernel (cuda_w4ws) before it joins the tuner: each
built tile at the 8B shapes, M = 64, 256 and 2048, checked against the contract first, then timed beside
cuBLAS bf16 (bench.time_us: CUDA graphs, weights rotated past L2, medians). Run 29's tuner timed
cuda_wg at M = 256 in the same way (docs/benchmarks.md): only this kernel's library is built.
    python benchmarks/device/ws_probe.py"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from turbopack.inference.kernels import bench, cuda_w4ws, reference


def main() -> None:
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    gen = torch.Generator(device="cuda").manual_seed(0)
    print(torch.cuda.get_device_name(), "| µs, median of graph replays | ws: BN x BM / stages")
    for name, shape in bench.SHAPES.items():
        wt = bench.make_weight("w4a16", shape, l2, gen)
        for m in (64, 256, 2048):
            x = torch.randn(m, shape[1], device="cuda", dtype=torch.bfloat16)
            ref = reference.ref_linear(x, "w4a16", wt.q)
            row = {"bf16": bench.time_us([partial(F.linear, x, w) for w in bench.bf16_weights(wt, l2)])}
            for (bn, bm), st in ((t, s) for t in cuda_w4ws.TILES for s in (4, 5)):
                kw = dict(bn=bn, bm=bm, stages=st)
                err = reference.rel_err(cuda_w4ws.w4_wgws(x, wt.copies[0], shape, None, **kw), ref)
                key = f"ws {bn}x{bm}/{st}"
                if not err < 1e-2:
                    row[key] = float("nan")
                    print(f"  {name} M={m} {key}: rel err {err:.2e}: FAILED")
                    continue
                row[key] = bench.time_us([partial(cuda_w4ws.w4_wgws, x, p, shape, None, **kw) for p in wt.copies])
            best = min((v, k) for k, v in row.items() if k.startswith("ws") and v == v)
            print(f"{name:8s} M={m:5d} " + " ".join(f"{k}={v:.1f}" for k, v in row.items())
                  + f" | best {best[1]}: {best[0] / row['bf16']:.2f}x bf16's time")


if __name__ == "__main__":
    main()
