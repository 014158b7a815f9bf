"""Packing throughput of the w4 layouts on one core (a measurement, not a test):

    python tests/layouts/bench_pack.py          # 4096 x 14336 (an 8B model's MLP down_proj)

Target: >= 500 MB/s of packed output. Reports the best of 5 runs per case.
"""

from __future__ import annotations

import time

import torch

from turbopack.formats import get_format
from turbopack.layouts import get_layout


def main(n: int = 4096, k: int = 14336) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    for sym in (True, False):
        fmt = get_format("w4a16", group_size=128, sym=sym)
        q = {"qweight": torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=g),
             "scales": (torch.rand(n, k // 128, generator=g) + 0.1).to(torch.bfloat16)}
        if not sym:
            q["zeros"] = torch.randint(0, 16, (n, k // 128), dtype=torch.uint8, generator=g)
        for name in ("w4_t16x64", "w4_t64x64"):
            layout = get_layout(name)
            best = float("inf")
            for _ in range(5):
                t = time.perf_counter()
                packed = layout.pack(fmt, q, (n, k))
                best = min(best, time.perf_counter() - t)
            out = sum(v.numel() * v.element_size() for v in packed.values())
            print(
                f"{name} {'sym ' if sym else 'asym'} {n}x{k}: {best * 1e3:6.1f} ms  {out / best / 1e6:6.0f} MB/s "
                "packed output"
            )


if __name__ == "__main__":
    main()
