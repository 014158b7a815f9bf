#!/usr/bin/env python3
"""v7's L2 prefetch (PREFETCH) in the 8B W4A16 decode step: the graph step (ms) with the shipped
table, then with PREFETCH set on every v7 entry (what PDL lets it do: a CTA's weight slice streams
into L2 while the kernel before it runs), batch 1 and 8, one model, captured anew each way.

    python3 benchmarks/device/prefetch_ab.py [--layers 32]
    python3 benchmarks/device/prefetch_ab.py --tables table   # the shipped table's step alone

A device diagnosis beside bench_e2e.py (whose full run takes minutes), not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_e2e import build_8b  # noqa: E402
from e2e_context import graph_step_ms  # noqa: E402

from turbopack.inference.kernels import table as kernel_table  # noqa: E402
from turbopack.inference.kernels.config import KernelName  # noqa: E402


def with_prefetch(t: kernel_table.KernelTable) -> kernel_table.KernelTable:
    """``t`` with PREFETCH on every W4 decode v7 entry (VARIANT 2 of the CUDA decode kernel)."""
    def bucket(by_bucket):
        return {b: replace(c, prefetch=True) if c.kernel == KernelName.CUDA and c.variant == 2 else c
                for b, c in by_bucket.items()}
    layouts = {name: kernel_table.LayoutTable(bucket(lt.default), {s: bucket(b) for s, b in lt.shapes.items()})
               for name, lt in t.layouts.items()}
    return replace(t, layouts=layouts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--tables", default="table,prefetch", help="of table (as shipped), prefetch")
    args = ap.parse_args()
    load, shipped = kernel_table.load_table, kernel_table.load_table("sm90")
    every = {"table": shipped, "prefetch": with_prefetch(shipped)}
    tables = {name: every[name] for name in args.tables.split(",")}
    model = build_8b("w4a16", args.layers)
    out = {}
    try:
        for name, t in tables.items():
            kernel_table.load_table = lambda arch, t=t: t  # dispatch reads the module's attribute per call
            for b in (1, 8):
                out[f"{name}/{b}"] = graph_step_ms(model, args.prompt, b)
                print(f"{name:9s} batch {b}: {out[f'{name}/{b}']:.4f} ms", flush=True)
    finally:
        kernel_table.load_table = load
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
