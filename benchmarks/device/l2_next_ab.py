#!/usr/bin/env python3
"""The next linear's bytes to L2 (cuda_w4.NEXT_L2_BYTES / NEXT_L2_CTAS, fastpath.link_next) in the 8B
W4A16 decode step: the graph step (ms) at batch 1 and 8 for each setting, off first and last (the
drift), one model, captured anew for each, and with the attention's idle splits running as before
run 19 (attention.LIVE_SPLITS off); then the kernel profile of one replay, off and at the best setting.

    python3 benchmarks/device/l2_next_ab.py [--layers 32] [--mb 0,4,8,16,32] [--ctas 0,528]

A device diagnosis beside bench_e2e.py, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_e2e import build_8b  # noqa: E402
from e2e_context import graph_step_ms, kernel_profile  # noqa: E402

from turbopack.inference.generate import Engine  # noqa: E402
from turbopack.inference.kernels import attention, cuda_w4  # noqa: E402


def step(model, prompt: int, batch: int, mb: int, ctas: int, live: bool = True) -> float:
    cuda_w4.NEXT_L2_BYTES, cuda_w4.NEXT_L2_CTAS, attention.LIVE_SPLITS = mb << 20, ctas, live
    try:
        return graph_step_ms(model, prompt, batch)
    finally:
        attention.LIVE_SPLITS = True


def profile(model, prompt: int, mb: int, ctas: int) -> list[list]:
    import torch

    cuda_w4.NEXT_L2_BYTES, cuda_w4.NEXT_L2_CTAS = mb << 20, ctas
    eng = Engine(model, kv="bf16")
    eng.generate(torch.randint(0, 1000, (1, prompt)), 8)
    rows = kernel_profile(eng._graph.graph.replay, top=10)
    del eng
    model.kv_caches = None
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--mb", default="0,4,8,16,32", help="NEXT_L2_BYTES settings, MiB (0 = off)")
    ap.add_argument("--ctas", default="0,528", help="NEXT_L2_CTAS settings (0 = every CTA)")
    ap.add_argument("--batches", default="1,8")
    args = ap.parse_args()
    model = build_8b("w4a16", args.layers)
    batches = [int(b) for b in args.batches.split(",")]
    settings = [(0, 0)] + [(mb, c) for mb in map(int, args.mb.split(",")) if mb for c in map(int, args.ctas.split(","))]
    settings.append((0, 0))  # off again: the drift over the call
    out: dict[str, float] = {}
    for i, (mb, c) in enumerate(settings):
        for b in batches:
            ms = step(model, args.prompt, b, mb, c)
            key = f"{mb}MiB/ctas{c}/b{b}" + ("/again" if i == len(settings) - 1 else "")
            out[key] = ms
            print(f"{key:28s} {ms:.4f} ms", flush=True)
    on = {k: v for k, v in out.items() if k.endswith("/b1") and not k.startswith("0MiB")}
    best = min(on, key=on.get) if on else None
    for b in batches:
        out[f"0MiB/every-split/b{b}"] = ms = step(model, args.prompt, b, 0, 0, live=False)
        print(f"{'0MiB/every-split/b' + str(b):28s} {ms:.4f} ms", flush=True)
    print(json.dumps(out))
    if best is not None:
        mb, ctas = int(best.split("MiB")[0]), int(best.split("/ctas")[1].split("/")[0])
        for name, (m, c) in (("off", (0, 0)), (f"best {best}", (mb, ctas))):
            print(f"--- kernel profile, batch 1, {name} (µs per step, launches)")
            for row in profile(model, args.prompt, m, c):
                print(f"  {row[1]:9.1f} {row[2]:5d}  {row[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
