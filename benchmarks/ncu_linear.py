#!/usr/bin/env python3
"""Run one linear-kernel config a few times for `ncu` to profile (the last launches are the ones to
read): any format the linear benchmark knows, any of its shapes and M, the shipped table's config or
one given as JSON. The call is checked against the reference first, so a profile is never of a
wrong kernel.

    ncu --clock-control none --kernel-name regex:w4_mma --launch-skip 3 --launch-count 1 \\
        --section SpeedOfLight --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis \\
        python3 benchmarks/ncu_linear.py --format w4a16 --shape qkv --m 64
    python3 benchmarks/ncu_linear.py --format w4a16 --shape gate_up --m 64 \\
        --cfg '{"kernel": "cuda_mm", "BN": 128, "BM": 64, "SPLIT_K": 1, "STAGES": 3}'
    python3 benchmarks/ncu_linear.py --shape gate_up --m 1 --glu \\
        --cfg '{"kernel": "cuda", "SPLIT_K": 16, "STAGES": 4, "VARIANT": 6, "GLU_WARPS": 16}'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbopack.inference.config import Activation  # noqa: E402
from turbopack.inference.kernels import bench, dispatch, reference  # noqa: E402
from turbopack.inference.kernels.config import KernelConfig  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--format", default="w4a16", choices=sorted(bench.SETUPS))
    ap.add_argument("--shape", default="gate_up", choices=sorted(bench.SHAPES))
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--cfg", default=None, help="a config as the table writes it (default: what dispatch runs)")
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--glu", action="store_true",
                    help="the weight as a fused gate|up with SiLU(gate) * up in its store (dispatch.glu)")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("error: ncu_linear needs a CUDA device", file=sys.stderr)
        return 2
    n, k = bench.SHAPES[a.shape]
    gen = torch.Generator(device="cuda").manual_seed(0)
    wt = bench.make_weight(a.format, (n, k), 0, gen)
    x = torch.randn(a.m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
    cfg = (KernelConfig.from_json(json.loads(a.cfg), "--cfg") if a.cfg else
           dispatch.resolve_config(wt.layout_name, wt.fmt, n, k, a.m, x.device))
    if a.glu:
        def run(x, packed):
            return dispatch.glu(x, wt.fmt, wt.layout_name, packed, (n, k), Activation.SILU, config=cfg)
        gu = reference.ref_linear(x, a.format, wt.q, None).double()
        want = torch.nn.functional.silu(gu[:, : n // 2]) * gu[:, n // 2:]
        got = run(x, wt.copies[0])
        err = float("inf") if got is None else reference.rel_err(got, want)
    else:
        err, run = bench.check(wt, cfg, x), bench.ours(wt, cfg)
    print(f"{a.format} {a.shape} {n}x{k} M={a.m} {cfg.to_json()}{' GLU' if a.glu else ''}: rel err {err:.1e}",
          file=sys.stderr)
    if not err < bench.TOL:
        print(f"error: the config misses the reference (rel err {err:.1e} >= {bench.TOL})", file=sys.stderr)
        return 1
    for _ in range(a.calls):
        run(x, wt.copies[0])
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
