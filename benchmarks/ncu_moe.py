#!/usr/bin/env python3
"""Run the CUDA grouped MoE step (csrc/moe_w4.cu, its default config) a few times at T tokens for
`ncu` to profile: Qwen3-30B-A3B's shapes, as bench_moe.py builds them.

    ncu --kernel-name regex:moe_ --launch-skip 2 --launch-count 2 --section SpeedOfLight \\
        python3 benchmarks/ncu_moe.py --tokens 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_moe as b  # noqa: E402

from turbopack.inference.kernels import cuda_moe  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--calls", type=int, default=3)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("error: ncu_moe needs a CUDA device", file=sys.stderr)
        return 2
    g = torch.Generator(device="cuda").manual_seed(0)
    _, _, stacked = b.build(b.QWEN3_30B, "cuda", g)
    x = torch.randn(a.tokens, b.QWEN3_30B["hidden"], device="cuda", generator=g).bfloat16()
    w, idx = b.routing(a.tokens, b.QWEN3_30B, "cuda", g)
    for _ in range(a.calls):
        cuda_moe.grouped_moe_cuda(x, w, idx, *stacked)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
