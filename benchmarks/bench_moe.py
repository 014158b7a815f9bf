#!/usr/bin/env python
"""Grouped W4A16 MoE layer benchmark on one GPU at Qwen3-30B-A3B's shapes (128 experts, hidden
2048, expert intermediate 768, top-8, group 128, asym, w4_t64x64): both grouped paths, the CUDA
decode (cuda_moe, csrc/moe_w4.cu) and the Triton kernels (moe_w4), each at its default config and
over a sweep of configs (CUDA: K splits x ring depths; Triton: BN / num_warps / num_stages), against
the runtime's loop of dense W4 linears (dispatch.linear per selected expert: gate, up, SiLU*mul,
down, weighted index_add).

Method (as bench.py's linear benchmark): every timed call is replayed from a CUDA graph, median
of the replays; successive calls read different copies of the expert stacks, enough copies that
the selected experts' bytes of all of them exceed 2.5x the L2, so weights come from DRAM. The
routing is fixed per token count (random top-8 of 128, seeded); the peer's per-expert token lists
are computed before capture (the runtime's loop computes them on the host each step: the peer is
timed without that sync). Bytes = the packed bytes (codes, scales, zero points) of the unique
experts the routing selects; % = of the measured SM copy bandwidth (bench.copy_bandwidth).
Before timing, every candidate config is run on the device and compared with the float64 contract
(each expert's linears from the arch-neutral tensors, reference.ref_linear): relative error >= 1e-2
is a failure (not timed; the script exits 1), and the loop peer must pass it too.

    python3 benchmarks/bench_moe.py --tokens 1,16,64 --log sweep.txt   # both paths, swept
    python3 benchmarks/bench_moe.py --no-sweep                         # default configs only
    python3 benchmarks/bench_moe.py --tokens 1 --no-sweep --cuda-head 2  # the default, then it without PDL
    python3 benchmarks/bench_moe.py --tokens 1 --no-triton-sweep       # the CUDA configs only
    python3 benchmarks/bench_moe.py --cpu-smoke                        # Triton interpreter, tiny shapes
    python3 benchmarks/bench_moe.py --shape llama3-8b-mlp --tokens 1,2 --no-triton-sweep   # 8B MLP, one expert
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

QWEN3_30B = dict(n_exp=128, hidden=2048, inter=768, top_k=8, group=128)
#: --shape: the layers it can time. llama3-8b-mlp is a dense SwiGLU MLP as the grouped decode's one
#: expert (fastpath.GROUPED_MLP_MAX_TOKENS, moe_grouped.dense_as_one_expert) against the loop of
#: dense W4 calls, which is then the dense path with gate and up as two linears
SHAPES = {"qwen3-30b-a3b": QWEN3_30B, "llama3-8b-mlp": dict(n_exp=1, hidden=4096, inter=14336, top_k=1, group=128)}
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


def cuda_candidates(t: int, shape: dict) -> list:
    """The registered default first, then it without the programmatic dependent launch of down, then K
    splits x ring depths, and at few tokens the few-token kernels' variants, then the routed ones
    with x per stage, and with down's sum over top-k in a launch of its own (deduplicated)."""
    from turbopack.inference.kernels import cuda_moe

    dev = torch.device("cuda")
    default = cuda_moe.default_config(t, shape["top_k"], shape["n_exp"], shape["hidden"], shape["inter"], dev)
    rows, splits = ((8, 16), (1, 2, 4)) if t > 8 else ((8,), (1, 2, 4, 8))
    cands = [default, dataclasses.replace(default, pdl=False)] + [
        cuda_moe.MoECudaConfig(sg, sd, stg, std, block_m=bm) for bm in rows for sg in splits for sd in (1, 2, 3)
        for stg, std in ((4, 8), (6, 4), (4, 4))]
    if cuda_moe.few_tokens(t, shape["top_k"]):  # the few-token kernels, together and each with a routed one
        cands += [cuda_moe.MoECudaConfig(sg, sd, stg, std, block_m=8, gate_up_by_pair=bp, down_by_token=bt,
                                         down_warps=dw)
                  for bp, bt in ((True, True), (True, False), (False, True)) for sg in ((1,) if bp else (1, 2))
                  for stg in (4, 6) for sd, std in (((1, 8), (1, 4)) if bt else ((1, 8), (2, 4)))
                  for dw in (cuda_moe.DOWN_WARPS if bt else (8,)) if not bt or dw * std <= cuda_moe.MAX_DOWN_SLOTS]
        # gate_up by pair as a PDL secondary of the previous call's down (which triggers at its store)
        cands += [dataclasses.replace(c, pdl_gate_up=True) for c in list(cands) if c.gate_up_by_pair]
        # down by token reading h per stage (moe_token.cuh)
        cands += [dataclasses.replace(c, x_per_stage=True) for c in list(cands)
                  if c.down_by_token and c.down_warps == 16]
    # the routed gate_up and down reading x / h per stage (no table of the sums of x)
    cands += [dataclasses.replace(c, x_per_stage=True) for c in list(cands)
              if not c.x_per_stage and not c.gate_up_by_pair and not c.down_by_token]
    # and down's sum over top-k in a launch of its own (split_down 1)
    cands += [dataclasses.replace(c, combine=True) for c in list(cands) if not c.down_by_token and c.split_down == 1]
    return list(dict.fromkeys(cands))


def triton_candidates(t: int, shape: dict) -> list:
    """Triton MoEConfig tiles: default_config's first, then BN / num_warps / num_stages variants."""
    from turbopack.inference.kernels import moe_w4

    default = moe_w4.default_config(t * shape["top_k"], shape["n_exp"], t)
    bm = default.block_m
    tiles = ((16, 32, 2, 3), (32, 64, 4, 3), (32, 32, 4, 4), (64, 64, 4, 3)) if bm == 1 else \
        ((32, 32, 4, 3), (64, 64, 4, 3), (64, 64, 8, 3), (64, 64, 4, 4), (128, 128, 8, 3), (128, 64, 8, 4))
    cands = [default] + [moe_w4.MoEConfig(bm, bg, bd, w, st) for bg, bd, w, st in tiles]
    return list(dict.fromkeys(cands))


def sweep(label: str, fn, cands: list, want: torch.Tensor, copies: list, timed: bool, log) -> list[dict]:
    """Each candidate checked against the float64 contract (a failure is recorded, not timed), then
    timed over the rotating copies; rows in candidate order, the first is the default."""
    from turbopack.inference.kernels import bench, reference

    rows = []
    for cfg in cands:
        try:
            err = reference.rel_err(fn(copies[0], cfg), want)
        except RuntimeError as exc:  # a launch the device refused: recorded as a failure, the sweep goes on
            print(f"  {label} {cfg}: {exc}  FAILED", file=log, flush=True)
            rows.append(dict(cfg=cfg, err=float("nan"), ok=False))
            continue
        row = dict(cfg=cfg, err=err, ok=bool(err < (TOL if want.is_cuda else SMOKE_TOL)))
        if row["ok"] and timed:
            row["us"] = bench.time_us([lambda s=s, c=cfg: fn(s, c) for s in copies], min_calls=max(24, len(copies)))
        print(f"  {label} {cfg}: rel err {err:.1e}" + (f", {row['us']:.1f} us" if "us" in row else "")
              + ("" if row["ok"] else "  FAILED the contract"), file=log, flush=True)
        rows.append(row)
    return rows


def run(args, shape: dict, dev: str, log) -> tuple[list[dict], bool]:
    gen = torch.Generator(device=dev).manual_seed(0)
    fmt, qs, stacks = build(shape, dev, gen)
    rows = [run_tokens(args, t, shape, dev, (fmt, qs, stacks), gen, log) for t in args.tokens]
    return rows, all(r["ok"] for row in rows for r in row["triton"] + row.get("cuda", []))


@dataclasses.dataclass(frozen=True)
class Layer:
    """One token count's inputs: x, a seeded routing, the loop's plan (loop_plan), the float64
    contract's y, the selected experts' packed bytes, and the expert stacks with (on CUDA) enough
    copies that successive calls read past L2."""
    x2: torch.Tensor
    weights: torch.Tensor
    idx: torch.Tensor
    plan: list
    want: torch.Tensor
    nbytes: int
    copies: list


def layer(t: int, shape: dict, dev: str, built, gen: torch.Generator) -> Layer:
    fmt, qs, stacks = built
    x2 = torch.randn(t, shape["hidden"], device=dev, generator=gen).bfloat16()
    weights, idx = routing(t, shape, dev, gen)
    plan = loop_plan(idx)
    want = contract(x2, weights, plan, qs)
    nbytes = len(plan) * expert_bytes(stacks)
    copies = [stacks]
    if dev == "cuda":
        l2 = torch.cuda.get_device_properties(0).L2_cache_size
        copies += [clone_stacks(stacks) for _ in range(max(2, math.ceil(2.5 * l2 / nbytes)) - 1)]
    return Layer(x2, weights, idx, plan, want, nbytes, copies)


def run_tokens(args, t: int, shape: dict, dev: str, built, gen: torch.Generator, log) -> dict:
    """One token count: the contract, both grouped paths swept, the loop peer."""
    from turbopack.inference.kernels import cuda_moe, moe_w4
    from turbopack.inference.kernels.dispatch import linear

    fmt, _, stacks = built
    lay = layer(t, shape, dev, built, gen)
    x2, weights, idx, plan, want, nbytes, copies = (lay.x2, lay.weights, lay.idx, lay.plan, lay.want, lay.nbytes,
                                                    lay.copies)
    row = dict(t=t, experts=len(plan), bytes=nbytes)
    print(f"T={t}: {len(plan)} experts, {nbytes / 1e6:.2f} MB", file=log, flush=True)
    tri = triton_candidates(t, shape)
    row["triton"] = sweep("triton", lambda s, c: moe_w4.grouped_moe(x2, weights, idx, *s, cfg=c,
                                                                   path=moe_w4.MoEPath.TRITON),
                          tri if args.sweep and args.triton_sweep else tri[:1], want, copies, dev == "cuda", log)
    if dev == "cuda" and cuda_moe.supports(x2, weights, idx, *stacks):
        cud = cuda_candidates(t, shape)
        row["cuda"] = sweep("cuda", lambda s, c: cuda_moe.grouped_moe_cuda(x2, weights, idx, *s, cfg=c),
                            cud if args.sweep else cud[:args.cuda_head], want, copies, True, log)
    row["err_loop"] = check(f"loop T={t}", loop_moe(x2, weights, plan, stacks, fmt, linear), want)
    if dev == "cuda":
        row["us_loop"] = bench_loop(x2, weights, plan, copies, fmt, linear)
    return row


def bench_loop(x2, weights, plan, copies, fmt, linear) -> float:
    from turbopack.inference.kernels import bench

    return bench.time_us([lambda s=s: loop_moe(x2, weights, plan, s, fmt, linear) for s in copies],
                         min_calls=len(copies), reps=5)


def _best(cands: list[dict]) -> dict | None:
    timed = [r for r in cands if "us" in r]
    return min(timed, key=lambda r: r["us"]) if timed else None


def _cell(r: dict | None, nbytes: int, bw: float | None) -> str:
    if r is None or "us" not in r:
        return "– | –"
    return f"{r['us']:.1f} | {100 * nbytes / (r['us'] * 1e-6) / bw:.0f}"


def table(rows: list[dict], bw: float | None) -> str:
    head = ("| T | experts hit | selected MB | CUDA default µs | % BW | CUDA best µs | % BW | Triton default µs | % BW "
            "| Triton best µs | % BW | loop µs | best vs loop | rel err (CUDA, Triton) |")
    out = [head, "|" + "---:|" * 14]
    for r in rows:
        cuda, tri = r.get("cuda", []), r["triton"]
        best = [b for b in (_best(cuda), _best(tri)) if b is not None]
        fastest = min((b["us"] for b in best), default=None)
        vs = f"{r['us_loop'] / fastest:.2f}x" if fastest and "us_loop" in r else "–"
        errs = f"{cuda[0]['err']:.1e}, " if cuda else "–, "
        out.append(f"| {r['t']} | {r['experts']} | {r['bytes'] / 1e6:.2f} "
                   f"| {_cell(cuda[0] if cuda else None, r['bytes'], bw)} "
                   f"| {_cell(_best(cuda), r['bytes'], bw)} | {_cell(tri[0], r['bytes'], bw)} "
                   f"| {_cell(_best(tri), r['bytes'], bw)} | {r.get('us_loop', float('nan')):.1f} | {vs} "
                   f"| {errs}{tri[0]['err']:.1e} |")
    winners = [f"T={r['t']}: CUDA {_best(r.get('cuda', [])) and _best(r['cuda'])['cfg']}, "
               f"Triton {_best(r['triton']) and _best(r['triton'])['cfg']}" for r in rows]
    return "\n".join(out + ["", "best configs:"] + winners)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", default="1,64", help="token counts T (comma-separated)")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes in the Triton interpreter, no timing")
    p.add_argument("--no-sweep", dest="sweep", action="store_false", help="time only the default configs")
    p.add_argument("--no-triton-sweep", dest="triton_sweep", action="store_false",
                   help="sweep the CUDA path only (Triton at its default config: no compiles of its candidates)")
    p.add_argument("--cuda-head", type=int, default=1,
                   help="with --no-sweep: time the first N CUDA candidates (2: also the default without PDL)")
    p.add_argument("--log", default=None, help="per-candidate lines to this file (default: stderr)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-30b-a3b", help="the layer's shapes")
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
    shape = SMOKE if args.cpu_smoke else SHAPES[args.shape]
    log = open(args.log, "w") if args.log else sys.stderr
    rows, ok = run(args, shape, dev, log)
    print(f"W4A16 MoE layer, {shape}, asym, w4_t64x64, bf16 activations; every timed config checked against "
          f"the float64 contract first; % BW = selected experts' bytes / time, of the copy bandwidth")
    print(table(rows, bw))
    print(f"({time.time() - t0:.0f} s)" + ("" if ok else "  FAILED: a config missed the contract (see the log)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
