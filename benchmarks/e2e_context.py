"""bench_e2e.py's CUDA-graph timer, kernel profile and measurements beside the main table: decode
at a long context per KV precision, one layer's decode attention alone (the config sweep that
picks the attention kernel's defaults), prefill time, and the runtime's fusions off and on.
Imported by bench_e2e.py (run on the device, not a test)."""

from __future__ import annotations

import statistics
import time

import torch

from turbopack.inference import model as M
from turbopack.inference.generate import Engine
from turbopack.inference.kernels.graph_capture import capture


def time_graph(fn, iters: int = 50, warmup: int = 5) -> float:
    """Median ms of fn() over iters, each timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def graph_step_ms(model: M.Transformer, prompt: int, batch: int = 1) -> float:
    """The decode step (ms, graph replay) of a fresh bf16-KV engine, captured now: the runtime's
    switches (PDL, fusions) as they are set at this call."""
    eng = Engine(model, kv="bf16")
    eng.generate(torch.randint(0, 1000, (batch, prompt)), 8)  # compile, capture
    ms = time_graph(eng._graph.graph.replay, iters=50)
    del eng
    model.kv_caches = None
    return ms


def kernel_profile(fn, n: int = 10, top: int = 14) -> list[list]:
    """[kernel name, µs per call of fn, launches per call] for the top kernels of ``fn`` (a CUDA
    graph replay: CUPTI reports the kernels inside it)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        rows.append([e.key[:90], round(t / n, 2), e.count // n])
    return sorted(rows, key=lambda r: -r[1])[:top]


def long_context(model: M.Transformer, kv: str, ctx: int = 4096, batch: int = 1) -> dict:
    """Decode step time at position ctx with a cache full of random K/V (the attention's cost does
    not depend on the values; no 4k prefill needed)."""
    eng = Engine(model, kv=kv)
    eng.reserve(batch, ctx + 64)
    with torch.no_grad():
        for cache in model.kv_caches:
            for buf in cache.buffers():
                if buf.dtype in (torch.int8, torch.uint8):
                    buf.copy_(torch.randint_like(buf, -100 if buf.dtype == torch.int8 else 0, 100))
                elif buf.numel():
                    buf.copy_(torch.rand_like(buf) * 0.1)
    tok = torch.zeros(batch, dtype=torch.long, device="cuda")
    eng.decode(tok, ctx)
    ms = time_graph(eng._graph.graph.replay, iters=50)
    del eng
    model.kv_caches = None
    torch.cuda.empty_cache()
    return {"step_ms": ms, "tok_s": batch * 1e3 / ms}


def attention_micro(contexts=(4096, 16384), configs=((32, 4, 2), (64, 4, 2), (128, 4, 2), (128, 8, 2))) -> dict:
    """One layer's decode attention (Llama-3-8B heads: 32 q, 8 kv, d 128; batch 1) per KV precision,
    kernel config (BLOCK_N x warps x stages) and code conversion (fast: bit patterns; conv:
    int->float): us per call and K/V bytes read per second. Each variant is checked first."""
    from turbopack.inference.kernels import attention as A
    from turbopack.inference.kv_quant import cache_bytes, cache_factory

    out = {}
    for ctx in contexts:
        for prec in ("bf16", "int8", "int4"):
            cache = cache_factory(prec, "triton")(1, 8, ctx + 64, 128, torch.bfloat16, "cuda")
            for buf in cache.buffers():
                if buf.dtype in (torch.int8, torch.uint8):
                    buf.copy_(torch.randint_like(buf, 0, 100))
                elif buf.numel():
                    buf.copy_(torch.rand_like(buf))
            q = torch.randn(1, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
            pos = torch.tensor([ctx - 1], device="cuda")
            mask = torch.arange(ctx + 64, device="cuda")[None, :] <= pos[:, None]
            if prec == "bf16":
                want = M.sdpa_gqa(q, cache.k, cache.v, mask)
            else:
                want = M.sdpa_gqa(q, *cache.dequantized(1, torch.bfloat16), mask)
            nbytes = cache_bytes(prec, 1, 8, ctx, 128)
            for bn, nw, ns in configs:
                for fast in ((False,) if prec == "bf16" else (False, True)):
                    # the loop's values bound now (fn is only called in this iteration, so the same values)
                    def fn(q=q, cache=cache, pos=pos, bn=bn, nw=nw, ns=ns, fast=fast):
                        return A.decode_attention(q, cache, pos, block_n=bn, num_warps=nw, num_stages=ns,
                                                  fast_dequant=fast)
                    err = ((fn().float() - want.float()).norm() / want.float().norm()).item()
                    assert err < 3e-2, (ctx, prec, bn, nw, ns, fast, err)  # int8 K/V on random data: 2.1e-2 seen
                    torch.cuda.synchronize()
                    g = torch.cuda.CUDAGraph()
                    with capture(g):
                        fn()
                    us = time_graph(g.replay, iters=100) * 1e3
                    key = f"{ctx}/{prec}/{bn}x{nw}x{ns}/{'fast' if fast else 'conv'}"
                    out[key] = {"us": us, "gb_s": nbytes / us / 1e3, "rel_err": err}
            del cache
    return out


def best_attention_config(micro: dict) -> tuple[int, int, int, bool]:
    """The kernel config with the least total time over contexts and precisions (conversion as
    measured best for each), then whether the fast code conversion wins at that config."""
    per: dict[tuple[str, str, str], float] = {}
    for key, r in micro.items():
        ctx, prec, cfg, conv = key.split("/")
        k = (ctx + prec, cfg, conv)
        per[k] = r["us"]
    cfgs = {c for _, c, _ in per}
    def total(cfg: str, conv: str | None) -> float:
        t = 0.0
        for (cp, c, v), us in per.items():
            if c == cfg and (conv is None or v == conv or cp.endswith("bf16")):
                t += us if conv is not None else min(per.get((cp, c, "fast"), us), per.get((cp, c, "conv"), us))
        return t
    best = min(cfgs, key=lambda c: total(c, None))
    fast = total(best, "fast") < total(best, "conv")
    bn, nw, ns = (int(v) for v in best.split("x"))
    return bn, nw, ns, fast


def prefill_ms(model: M.Transformer, tokens: int) -> float:
    """Median wall time of one prefill of ``tokens`` tokens (batch 1), caches reserved beforehand."""
    eng = Engine(model, kv="bf16", use_graphs=False)
    eng.reserve(1, tokens + 8)
    ids = torch.randint(0, 1000, (1, tokens), device="cuda")
    times = []
    for _ in range(4):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        eng.prefill(ids)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    del eng
    model.kv_caches = None
    torch.cuda.empty_cache()
    return 1e3 * statistics.median(times[1:])  # the first call compiles


FUSIONS = {  # name -> (fastpath.FUSED_DECODE_ATTENTION, fastpath.GROUPED_MLP_MAX_TOKENS)
    "neither": (False, 0), "attention": (True, 0), "grouped_mlp": (False, 16), "both": (True, 16)}


def fusion_ab(model: M.Transformer, prompt: int, batches: tuple[int, ...] = (1, 8)) -> dict:
    """The decode step (ms, graph replay) with each of the runtime's launch-saving fusions off and
    on, captured anew each way: rotary + K/V store + attention + split merge as one launch, and the
    dense W4 MLP as the grouped MoE decode's one expert (gate|up with SiLU * up, then down)."""
    from turbopack.inference import fastpath as F

    before = F.FUSED_DECODE_ATTENTION, F.GROUPED_MLP_MAX_TOKENS
    out = {}
    try:
        for name, (attn, mlp) in FUSIONS.items():
            F.FUSED_DECODE_ATTENTION, F.GROUPED_MLP_MAX_TOKENS = attn, mlp
            for b in batches:
                out[f"{name}/{b}"] = graph_step_ms(model, prompt, b)
    finally:
        F.FUSED_DECODE_ATTENTION, F.GROUPED_MLP_MAX_TOKENS = before
    return out
