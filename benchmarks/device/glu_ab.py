#!/usr/bin/env python3
"""The W4 MLP's activation in gate|up's store (fastpath.GLU_DECODE), the norm fold
(fastpath.FOLD_NORMS) and the attention's splits by position (attention.LIVE_SPLITS,
MIN_SPLIT_LEN) in the 8B W4A16 decode step: the graph step (ms) at
each prompt length (the step's position is the prompt + 8) for each setting, at batch 1 (and 8 for
the first four), the default first and last (the drift), one model, captured anew for each; then
the kernel profile of one replay (default, batch 1, the first prompt).

    python3 benchmarks/device/glu_ab.py [--layers 32] [--prompts 32,152] [--mins 128,512]
    python3 benchmarks/device/glu_ab.py --shape gemma2-9b --only "default,no GLU" --prompts 32
    python3 benchmarks/device/glu_ab.py --format w8a16 --only "default,no fold,no GLU,no GLU or fold" --prompts 32

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

from turbopack.inference import fastpath  # noqa: E402
from turbopack.inference.generate import Engine  # noqa: E402
from turbopack.inference.kernels import attention  # noqa: E402

#: (label, GLU_DECODE, LIVE_SPLITS, MIN_SPLIT_LEN, FOLD_NORMS): the default first (and last, in main)
SETTINGS = [("default", True, True, 256, True), ("no fold", True, True, 256, False),
            ("no GLU", False, True, 256, True), ("no GLU or fold", False, True, 256, False),
            ("fixed splits", True, False, 256, True), ("neither (run 18)", False, False, 256, False)]


def apply(glu: bool, live: bool, min_len: int, fold: bool = True) -> None:
    fastpath.GLU_DECODE, attention.LIVE_SPLITS, attention.MIN_SPLIT_LEN = glu, live, min_len
    fastpath.FOLD_NORMS = fold


def main() -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--shape", default="llama3-8b", help="bench_e2e's --shape presets")
    ap.add_argument("--format", default="w4a16", help="bench_e2e's --formats, one")
    ap.add_argument("--only", default="", help="comma-separated setting labels (default: all)")
    ap.add_argument("--prompts", default="32,152")
    ap.add_argument("--mins", default="128,512", help="MIN_SPLIT_LEN settings beside the default 256")
    args = ap.parse_args()
    model = build_8b(args.format, args.layers, args.shape)
    prompts = [int(p) for p in args.prompts.split(",")]
    settings = [(*s, (1, 8)) for s in SETTINGS] + [(f"shortest split {m}", True, True, m, True, (1,))
                                                   for m in map(int, args.mins.split(","))]
    settings.append(("default again", True, True, 256, True, (1, 8)))
    if args.only:
        settings = [s for s in settings if s[0] in args.only.split(",")]
    out: dict[str, float] = {}
    try:
        for label, glu, live, min_len, fold, batches in settings:
            apply(glu, live, min_len, fold)
            for prompt in prompts:
                for b in batches:
                    key = f"{label} / pos {prompt + 8} / batch {b}"
                    out[key] = ms = graph_step_ms(model, prompt, b)
                    print(f"{key:44s} {ms:.4f} ms", flush=True)
        apply(True, True, 256)
        eng = Engine(model, kv="bf16")
        eng.generate(torch.randint(0, 1000, (1, prompts[0])), 8)
        print("--- kernel profile, batch 1, default (µs per step, launches)")
        for row in kernel_profile(eng._graph.graph.replay, top=10):
            print(f"  {row[1]:9.1f} {row[2]:5d}  {row[0]}")
    finally:
        apply(True, True, 256)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
