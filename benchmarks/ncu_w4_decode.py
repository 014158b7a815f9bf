#!/usr/bin/env python3
"""Run one W4A16 kernel call a few times for `ncu` to profile (the last launch is the one to read).

    ncu --clock-control none --kernel-name regex:w4_decode --launch-skip 3 --launch-count 1 \\
        --section SpeedOfLight --section Occupancy --section WarpStateStats \\
        python3 benchmarks/ncu_w4_decode.py --shape gate_up --m 1 --split 2 --stages 6 --variant 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbopack.inference.kernels import bench, cuda_w4  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="gate_up", choices=sorted(bench.SHAPES))
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--split", type=int, default=0)
    ap.add_argument("--stages", type=int, default=cuda_w4.DEFAULT_STAGES)
    ap.add_argument("--variant", type=int, default=cuda_w4.DEFAULT_VARIANT, choices=sorted(cuda_w4.VARIANTS))
    a = ap.parse_args()
    n, k = bench.SHAPES[a.shape]
    gen = torch.Generator(device="cuda").manual_seed(0)
    wt = bench.make_weight("w4a16", (n, k), 0, gen)
    x = torch.randn(a.m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
    for _ in range(4):
        cuda_w4.w4_decode(x, wt.copies[0], (n, k), None, a.split, group=128, stages=a.stages, variant=a.variant)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
