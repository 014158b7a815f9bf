#!/usr/bin/env python3
"""The fused gate|up with its activation in the store (cuda_w4 ``glu``, VARIANT 6) against gate|up then
act_mul (the table's config, two launches), per family and token count, and the GLU's own warps a
CTA (half on gate's rows, half on up's). Timed as bench_linear times (CUDA graphs of each call,
weights rotated past L2, median; PDL off); each GLU build is checked against the two launches
first (rel err < 2e-3). Prints one row per (family, M) and each family's best GLU at its largest M
over M = 1 (issue 11's W4 bar: <= 1.25x). --write-table: the shipped sm90.json with GLU_WARPS set
at each measured M that is a bucket of the gate_up shape's entry (the best warps, or 0 where the
two launches won), to $OUT/sm90.json.

    python3 benchmarks/device/glu_rows.py [--models llama3-8b,gemma2-9b] [--ms 1,2,4,8,12,16] [--write-table]

A device diagnosis beside rows_ab.py, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from turbopack.inference.config import Activation  # noqa: E402
from turbopack.inference.kernels import bench, cuda_build, cuda_w4, pdl, reference  # noqa: E402
from turbopack.inference.kernels.dispatch import resolve_config  # noqa: E402
from turbopack.inference.kernels.glue import act_mul  # noqa: E402

#: the families' MLP activations (Gemma's GeLU-tanh, the others' SiLU)
ACT = {"gemma2-9b": Activation.GELU_TANH}


def two_launches(x, packed, shape, cfg, group, act):
    """gate|up at the table's config, then act_mul (the MLP's path without the GLU)."""
    y = cuda_w4.w4_decode(x, packed, shape, None, cfg.split_k or 0, group=group, stages=cfg.ring_stages or 4,
                          variant=cfg.variant)
    return act_mul(y, act)


def glu(x, packed, shape, warps, group, act):
    return cuda_w4.w4_decode(x, packed, shape, None, warps, group=group, stages=4, variant=cuda_w4.ROWS_X, glu=act)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(bench.MODELS))
    ap.add_argument("--ms", default="1,2,4,8,12,16")
    ap.add_argument("--write-table", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    src = Path(cuda_w4.__file__).parent / "configs" / "sm90.json"
    table = json.loads(src.read_text())
    os.environ.setdefault(pdl.ENV, "0")
    cuda_build.refresh_pdl()
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    bw = max(bench.copy_bandwidth().values())
    gen = torch.Generator(device="cuda").manual_seed(5)
    print(f"{torch.cuda.get_device_name()}; copy bandwidth {bw / 1e12:.2f} TB/s")
    print("| family | M | table cfg | gate_up + act_mul µs | GLU µs by warps | best GLU | speedup | % floor |")
    print("|---|---:|---|---:|---|---:|---:|---:|")
    for model in args.models.split(","):
        n, k = bench.MODELS[model]["gate_up"]
        act = ACT.get(model, Activation.SILU)
        wt = bench.make_weight("w4a16", (n, k), l2, gen)
        best: dict[int, float] = {}
        for m in map(int, args.ms.split(",")):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
            cfg = resolve_config(wt.layout_name, wt.fmt, n, k, m, torch.device("cuda"))
            group = wt.fmt.group_size
            t_two = bench.time_us([partial(two_launches, x, p, (n, k), cfg, group, act) for p in wt.copies])
            want = two_launches(x, wt.copies[0], (n, k), cfg, group, act)
            by_warps = {}
            for w in cuda_w4.rows_warps(cuda_w4.ROWS_X, m):
                err = reference.rel_err(glu(x, wt.copies[0], (n, k), w, group, act), want.float())
                if not err < 2e-3:
                    print(f"  REJECTED {model} M={m} GLU {w} warps: rel err {err:.2e}", file=sys.stderr)
                    continue
                by_warps[w] = bench.time_us([partial(glu, x, p, (n, k), w, group, act) for p in wt.copies])
            w_best = min(by_warps, key=by_warps.get)
            best[m] = by_warps[w_best]
            entry = table["layouts"][wt.layout_name]["shapes"].get(f"{n}x{k}", {}).get(str(m))
            if entry is not None:
                entry["GLU_WARPS"] = w_best if best[m] < t_two else 0
            floor = (wt.nbytes + 2 * m * (n // 2 + k)) / bw * 1e6
            by_w = " ".join(f"{w}: {t:.1f}" for w, t in by_warps.items())
            print(f"| {model} | {m} | {cfg.describe()} | {t_two:.2f} | {by_w} | {best[m]:.2f} ({w_best}) | "
                  f"{t_two / best[m]:.2f}x | {100 * floor / best[m]:.0f}% |", flush=True)
        ms = sorted(best)
        if ms[0] == 1 and len(ms) > 1:
            print(f"{model} gate_up GLU: M={ms[-1]} / M=1 = {best[ms[-1]] / best[1]:.2f}x")
        del wt
        torch.cuda.empty_cache()
    if args.write_table:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "sm90.json").write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
