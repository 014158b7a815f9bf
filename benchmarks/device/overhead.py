#!/usr/bin/env python3
"""Where a small W4A16 decode linear's time goes: µs per call at M = 1 against the weight bytes,
N fixed and K swept, fitted as t = fixed + bytes / bandwidth (least squares). The intercept is
what every call pays whatever its size (launch, CTA start, prologue, the split-K tail), the
slope's inverse the bandwidth the stream reaches once running. Run 11 left qkv and o at 18-37% of
copy bandwidth and the MoE layer at T = 1 (12.6 + 6.3 MB) at 26%: if the intercept is most of
their time, the lever is the fixed cost, not the stream. v7 at the shipped split and at split 1,
bf16 cuBLAS beside it, and an empty graph node's cost (a 1-element add).

    python3 benchmarks/device/overhead.py [--n 4096,6144] [--ks 512,1024,2048,4096,8192,14336]

A device diagnosis (CUDA graphs, weights rotated past L2, medians; bench.py's method), not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from turbopack.inference.kernels import bench  # noqa: E402
from turbopack.inference.kernels.dispatch import resolve_config  # noqa: E402


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(intercept µs, bandwidth TB/s) of t = a + bytes * b over (bytes, µs) points."""
    n = len(points)
    mx, my = sum(p[0] for p in points) / n, sum(p[1] for p in points) / n
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my - b * mx, 1 / b / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="4096,6144")
    ap.add_argument("--ks", default="512,1024,2048,4096,8192,14336")
    args = ap.parse_args()
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    gen = torch.Generator(device="cuda").manual_seed(0)
    one = torch.zeros(1, device="cuda")
    out = {"empty_node_us": bench.time_us([lambda: one.add_(1)])}
    print(f"empty graph node: {out['empty_node_us']:.2f} µs")
    for n in map(int, args.n.split(",")):
        series: dict[str, list[tuple[float, float]]] = {"v7 shipped": [], "v7 split 1": [], "bf16": []}
        for k in map(int, args.ks.split(",")):
            wt = bench.make_weight("w4a16", (n, k), l2, gen)
            x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16, generator=gen)
            cfg = resolve_config(wt.layout_name, wt.fmt, n, k, 1, torch.device("cuda"))
            for name, c in (("v7 shipped", cfg), ("v7 split 1", dataclasses.replace(cfg, split_k=1))):
                assert bench.check(wt, c, x) < bench.TOL, (n, k, name)
                series[name].append((wt.nbytes, bench.time_ours(wt, c, x)))
            bf = bench.bf16_weights(wt, l2)
            calls = [lambda w=w, x=x: torch.nn.functional.linear(x, w) for w in bf]
            series["bf16"].append((2 * n * k, bench.time_us(calls)))
            row = "  ".join(f"{s} {v[-1][1]:6.1f}" for s, v in series.items())
            print(f"N {n} K {k:5d} ({wt.nbytes / 1e6:5.1f} MB W4, split {cfg.split_k}): {row}  µs", flush=True)
            del wt, bf
            torch.cuda.empty_cache()
        for s, pts in series.items():
            a, bw = fit(pts)
            out[f"{n}/{s}"] = {"fixed_us": a, "stream_tb_s": bw, "points": pts}
            print(f"N {n} {s:10s}: fixed {a:5.2f} µs + bytes / {bw:.2f} TB/s")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
