#!/usr/bin/env python3
"""The decode attention's splits by position (attention.LIVE_SPLITS, MIN_SPLIT_LEN) on one layer of
Llama-3-8B heads (32 q / 8 kv, d 128, batch 1, bf16 KV): µs per call (a CUDA graph of the kernel)
per cache length and position, fixed splits (every one runs and merges, as before run 19) against
splits that follow the position at several shortest lengths. Each variant is checked first.

    python3 benchmarks/device/attn_splits.py [--mins 128,256,512,1024]

A device diagnosis beside bench_e2e.py, not a test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from e2e_context import time_graph  # noqa: E402

from turbopack.inference import model as M  # noqa: E402
from turbopack.inference.kernels import attention as A  # noqa: E402
from turbopack.inference.kernels.graph_capture import capture  # noqa: E402
from turbopack.inference.kv_quant import cache_factory  # noqa: E402

#: (cache length, positions)
CASES = ((256, (40, 160, 255)), (4096, (160, 1000, 4000)), (16384, (1000, 4000, 16000)))


def time_us(q, cache, pos, live: bool, min_len: int) -> tuple[float, float]:
    A.LIVE_SPLITS, A.MIN_SPLIT_LEN = live, min_len
    try:
        mask = torch.arange(cache.max_seq_len, device="cuda")[None, :] <= pos[:, None]
        want = M.sdpa_gqa(q, cache.k, cache.v, mask)
        err = ((A.decode_attention(q, cache, pos).float() - want.float()).norm() / want.float().norm()).item()
        assert err < 1e-2, (live, min_len, err)
        g = torch.cuda.CUDAGraph()
        with capture(g):
            A.decode_attention(q, cache, pos)
        return time_graph(g.replay, iters=100) * 1e3, err
    finally:
        A.LIVE_SPLITS, A.MIN_SPLIT_LEN = True, 256


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mins", default="128,256,512,1024")
    args = ap.parse_args()
    mins = [int(m) for m in args.mins.split(",")]
    print("| cache | pos | fixed splits | " + " | ".join(f"by position, >= {m}" for m in mins) + " |")
    print("|---:|---:|---:|" + "---:|" * len(mins))
    for length, positions in CASES:
        cache = cache_factory("bf16", "triton")(1, 8, length, 128, torch.bfloat16, "cuda")
        for buf in cache.buffers():
            buf.copy_(torch.randn_like(buf.float()).to(buf.dtype))
        q = torch.randn(1, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
        for p in positions:
            pos = torch.tensor([p], device="cuda")
            row = [time_us(q, cache, pos, False, 128)[0]] + [time_us(q, cache, pos, True, m)[0] for m in mins]
            print(f"| {length} | {p} | " + " | ".join(f"{us:.2f}" for us in row) + " |", flush=True)
        del cache
    return 0


if __name__ == "__main__":
    sys.exit(main())
