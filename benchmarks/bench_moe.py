#!/usr/bin/env python
"""Grouped W4A16 MoE layer benchmark on one GPU at Qwen3-30B-A3B's shapes (128 experts, hidden
2048, expert intermediate 768, top-8, group 128, asym, w4_t64x64): the grouped kernels
(turbopack.inference.kernels.moe_w4) against the runtime's loop of dense W4 linears
(dispatch.linear per selected expert: gate, up, SiLU*mul, down, weighted index_add).

Method (as bench.py's linear benchmark): every timed call is replayed from a CUDA graph, median
of the replays; successive calls read different copies of the expert stacks, enough copies that
the selected experts' bytes of all of them exceed 2.5x the L2, so weights come from DRAM. The
routing is fixed per token count (random top-8 of 128, seeded); the peer's per-expert token lists
are computed before capture (the runtime's loop computes them on the host each step: the peer is
timed without that sync). Bytes = the packed bytes (codes, scales, zero points) of the unique
experts the routing selects; % = of the measured SM copy bandwidth (bench.copy_bandwidth).
Before timing, both paths are checked on the device against the float64 contract (each expert's
linears from the arch-neutral tensors, reference.ref_linear): a relative error >= 1e-2 aborts.

    python3 benchmarks/bench_moe.py                  # T = 1 and 64 on the GPU
    python3 benchmarks/bench_moe.py --cpu-smoke      # correctness only, Triton interpreter, tiny shapes
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

QWEN3_30B = dict(n_exp=128, hidden=2048, inter=768, top_k=8, group=128)
SMOKE = dict(n_exp=8, hidden=128, inter=64, top_k=2, group=64)
TOL = 1e-2
#: the Triton interpreter's fp32 -> bf16 cast truncates: the five chained roundings drift ~2e-2
SMOKE_TOL = 4e-2


def build(shape: dict, dev: str, gen: torch.Generator):
    """(format, arch-neutral q per linear per expert, stacked StackedW4 per linear)."""
    from turbopack.formats import get_format
    from turbopack.inference.kernels import moe_w4, reference

    fmt = get_format("w4a16", group_size=shape["group"], sym=False)
    e, h, i = shape["n_exp"], shape["hidden"], shape["inter"]
    qs, stacks = [], []
    for n, k in ((i, h), (i, h), (h, i)):
        q = [fmt.quantize(torch.randn(n, k, device=dev, generator=gen) * 0.02) for _ in range(e)]
        packed = [reference.pack_w4(x, 64) for x in q]
        cat = {key: torch.stack([p[key] for p in packed]) for key in packed[0]}
        qs.append(q)
        stacks.append(moe_w4.StackedW4(cat["qweight"], cat["scales"], cat.get("zeros"), (n, k), fmt.group_size))
    return fmt, qs, stacks


def clone_stacks(stacks):
    from turbopack.inference.kernels import moe_w4

    return [moe_w4.StackedW4(s.qweight.clone(), s.scales.clone(), s.zeros.clone() if s.zeros is not None else None,
                             s.shape, s.group) for s in stacks]


def expert_bytes(stacks) -> int:
    """Packed bytes of one expert's three linears."""
    return sum(t[0].numel() * t.element_size() for s in stacks for t in (s.qweight, s.scales, s.zeros)
               if t is not None)


def routing(t: int, shape: dict, dev: str, gen: torch.Generator):
    logits = torch.randn(t, shape["n_exp"], device=dev, generator=gen)
    top, idx = torch.topk(torch.softmax(logits, -1), shape["top_k"], dim=-1)
    return (top / top.sum(-1, keepdim=True)).bfloat16(), idx


def loop_plan(idx: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """(expert, token ids, slot in top-k) per selected expert: the runtime loop's torch.where, ahead."""
    return [(e, *torch.where(idx == e)) for e in idx.unique().tolist()]


def loop_moe(x2, weights, plan, stacks, fmt, linear):
    """The runtime's per-expert loop over dense W4 linears (dispatch.linear on the stacks' slices)."""
    gate, up, down = stacks
    out = torch.zeros_like(x2)
    for e, tok, pos in plan:
        xe = x2[tok]
        g, u = (linear(xe, fmt, "w4_t64x64", s.packed(e), s.shape) for s in (gate, up))
        y = linear((F.silu(g) * u).to(x2.dtype), fmt, "w4_t64x64", down.packed(e), down.shape)
        out.index_add_(0, tok, (y * weights[tok, pos, None]).to(out.dtype))
    return out


def contract(x2, weights, plan, qs):
    """float64 contract of the layer: each expert's linears from its arch-neutral tensors."""
    from turbopack.inference.kernels import reference

    out = torch.zeros(x2.shape, dtype=torch.float32, device=x2.device)
    for e, tok, pos in plan:
        xe = x2[tok]
        g, u = (reference.ref_linear(xe, "w4a16", qs[w][e]).to(x2.dtype) for w in (0, 1))
        y = reference.ref_linear((F.silu(g) * u).to(x2.dtype), "w4a16", qs[2][e]).to(x2.dtype)
        out.index_add_(0, tok, y.float() * weights[tok, pos, None].float())
    return out


def check(name: str, got: torch.Tensor, want: torch.Tensor) -> float:
    from turbopack.inference.kernels import reference

    err = reference.rel_err(got, want)
    tol = TOL if got.is_cuda else SMOKE_TOL
    if not err < tol:
        raise SystemExit(f"FAILED: {name}: relative error {err:.2e} >= {tol} against the float64 contract")
    return err


def run(args, shape: dict, dev: str) -> list[dict]:
    from turbopack.inference.kernels import moe_w4
    from turbopack.inference.kernels.dispatch import linear

    gen = torch.Generator(device=dev).manual_seed(0)
    fmt, qs, stacks = build(shape, dev, gen)
    per_expert = expert_bytes(stacks)
    rows = []
    for t in args.tokens:
        x2 = torch.randn(t, shape["hidden"], device=dev, generator=gen).bfloat16()
        weights, idx = routing(t, shape, dev, gen)
        plan = loop_plan(idx)
        want = contract(x2, weights, plan, qs)
        errs = (check(f"grouped T={t}", moe_w4.grouped_moe(x2, weights, idx, *stacks), want),
                check(f"loop T={t}", loop_moe(x2, weights, plan, stacks, fmt, linear), want))
        nbytes = len(plan) * per_expert
        row = dict(t=t, experts=len(plan), bytes=nbytes, err_grouped=errs[0], err_loop=errs[1])
        if dev == "cuda":
            row.update(time_both(args, x2, weights, idx, plan, stacks, fmt, linear, nbytes))
        rows.append(row)
    return rows


def time_both(args, x2, weights, idx, plan, stacks, fmt, linear, nbytes: int) -> dict:
    from turbopack.inference.kernels import bench, moe_w4

    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    copies = [stacks] + [clone_stacks(stacks) for _ in range(max(2, math.ceil(2.5 * l2 / nbytes)) - 1)]
    grouped = [lambda s=s: moe_w4.grouped_moe(x2, weights, idx, *s) for s in copies]
    looped = [lambda s=s: loop_moe(x2, weights, plan, s, fmt, linear) for s in copies]
    us = bench.time_us(grouped, min_calls=max(24, len(copies)))
    us_loop = bench.time_us(looped, min_calls=len(copies), reps=5)
    del copies
    return dict(us=us, us_loop=us_loop, gbs=nbytes / us * 1e-3)


def table(rows: list[dict], bw: float | None) -> str:
    head = "| T | experts hit | selected bytes (MB) | grouped µs | GB/s | % of copy BW | loop µs | speed-up | rel err |"
    out = [head, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "us" in r:
            timed = (f"{r['us']:.1f} | {r['gbs']:.0f} | {100 * r['gbs'] * 1e9 / bw:.0f} | {r['us_loop']:.1f} | "
                     f"{r['us_loop'] / r['us']:.2f}x")
        else:
            timed = "– | – | – | – | –"
        out.append(f"| {r['t']} | {r['experts']} | {r['bytes'] / 1e6:.2f} | {timed} | {r['err_grouped']:.1e} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", default="1,64", help="token counts T (comma-separated)")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes in the Triton interpreter, no timing")
    args = p.parse_args(argv)
    args.tokens = [int(v) for v in args.tokens.split(",")]
    if args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported
    elif not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (or --cpu-smoke)")
    t0 = time.time()
    dev = "cpu" if args.cpu_smoke else "cuda"
    bw = None
    if dev == "cuda":
        from turbopack.inference.kernels import bench

        bw = bench.copy_bandwidth()["kernel"]
        print(f"{torch.cuda.get_device_name(0)}: SM copy bandwidth {bw / 1e9:.0f} GB/s (read + write)")
    shape = SMOKE if args.cpu_smoke else QWEN3_30B
    rows = run(args, shape, dev)
    print(f"W4A16 MoE layer, {shape}, asym, w4_t64x64, bf16 activations; checked against the float64 contract")
    print(table(rows, bw))
    print(f"({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
