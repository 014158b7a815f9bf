"""The device probe of the warp-specialized kernels before the tuner's run: the W4A16 one (cuda_w4ws)
and the W8A8 int8 one (cuda_i8ws) at every tuner candidate (tile, ring, split, CLUSTER) of the 8B
shapes, M = 64, 256 and 2048 (W8A8: 256 and 2048, beside the Triton int8 GEMM's tiles and
torch._int_mm); every
config checked against the contract first, then timed beside cuBLAS bf16 (bench.time_us: CUDA
graphs, weights rotated past L2, medians). Run 29's tuner timed cuda_wg and the Triton int8 GEMM
in the same way (docs/benchmarks.md).
    python benchmarks/device/ws_probe.py [--only w4a16|w8a8]"""

from __future__ import annotations

import argparse
from functools import partial

import torch
import torch.nn.functional as F

from turbopack.inference.kernels import bench, reference, tune
from turbopack.inference.kernels.config import KernelConfig, KernelName
from turbopack.inference.kernels.dispatch import linear


def _timed_row(label: str, setup: str, wt, shape: tuple[int, int], m: int, configs: dict[str, KernelConfig],
               l2: int) -> dict[str, float]:
    """bf16's µs and each config's through dispatch on fresh x, each first checked against the float64
    contract (NaN and a FAILED line where it is not within 1e-2)."""
    x = torch.randn(m, shape[1], device="cuda", dtype=torch.bfloat16)
    ref = reference.ref_linear(x, setup, wt.q)
    row = {"bf16": bench.time_us([partial(F.linear, x, w) for w in bench.bf16_weights(wt, l2)])}
    for key, cfg in configs.items():
        err = reference.rel_err(linear(x, wt.fmt, wt.layout_name, wt.copies[0], shape, None, cfg), ref)
        if not err < 1e-2:
            row[key] = float("nan")
            print(f"  {label} {key}: rel err {err:.2e}: FAILED")
            continue
        row[key] = bench.time_us([partial(linear, x, wt.fmt, wt.layout_name, p, shape, None, cfg) for p in wt.copies])
    return row


def _w4_configs(n: int, k: int, m: int, sms: int) -> dict[str, KernelConfig]:
    return {f"ws {c.block_n}x{c.block_m}/{c.ring_stages}/s{c.split_k}{'/mc' if c.cluster else ''}": c
            for c in tune.candidates("w4a16", n, k, m, sms, hopper=True) if c.kernel is KernelName.CUDA_WS}


def w4a16(l2: int, gen: torch.Generator) -> None:
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(torch.cuda.get_device_name(), "| µs, median of graph replays | ws: BN x BM / stages / split",
          "(/mc: CLUSTER, the slices summed in a cluster)")
    for name, shape in bench.SHAPES.items():
        wt = bench.make_weight("w4a16", shape, l2, gen)
        for m in (64, 256, 2048):
            row = _timed_row(f"{name} M={m}", "w4a16", wt, shape, m, _w4_configs(*shape, m, sms), l2)
            best = min((v, k) for k, v in row.items() if k.startswith("ws") and v == v)
            print(f"{name:8s} M={m:5d} bf16={row['bf16']:.1f} | best {best[1]}={best[0]:.1f}: "
                  f"{best[0] / row['bf16']:.2f}x bf16's time")
            print("   all: " + " ".join(f"{k}={v:.1f}" for k, v in row.items()))


def _w8a8_configs(n: int, k: int, m: int, sms: int) -> dict[str, KernelConfig]:
    out = {"int_mm": KernelConfig(KernelName.INT_MM)}
    for c in tune.candidates("w8a8", n, k, m, sms, hopper=True):
        if c.kernel is KernelName.TRITON:
            out[f"tri {c.block_m}x{c.block_n}x{c.block_k}/{c.num_warps}w{c.num_stages}"] = c
        elif c.kernel is KernelName.CUDA_WS:
            out[f"ws {c.block_m}/{c.ring_stages}/s{c.split_k}{'/mc' if c.cluster else ''}"] = c
    return out


def w8a8(l2: int, gen: torch.Generator) -> None:
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(torch.cuda.get_device_name(), "| W8A8 µs | ws: BM / stages / split",
          "(/mc: CLUSTER, the slices summed in a cluster)")
    for name, shape in bench.SHAPES.items():
        wt = bench.make_weight("w8a8", shape, l2, gen)
        for m in (256, 2048):
            row = _timed_row(f"{name} M={m}", "w8a8", wt, shape, m, _w8a8_configs(*shape, m, sms), l2)
            best = {kind: min((v, k) for k, v in row.items() if k.startswith(kind) and v == v)
                    for kind in ("ws", "tri", "int_mm")}
            print(f"{name:8s} M={m:5d} bf16={row['bf16']:.1f} " + " ".join(
                f"{kind} {k}={v:.1f} ({row['bf16'] / v:.2f}x)" for kind, (v, k) in best.items()))
            print("   all: " + " ".join(f"{k}={v:.1f}" for k, v in row.items()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=("w4a16", "w8a8"))
    args = ap.parse_args()
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    gen = torch.Generator(device="cuda").manual_seed(0)
    for fmt, fn in (("w8a8", w8a8), ("w4a16", w4a16)):
        if args.only in (None, fmt):
            fn(l2, gen)


if __name__ == "__main__":
    main()
