#!/usr/bin/env python3
"""The speed of light of one launch per byte count: what a kernel that only streams B bytes from
HBM takes, launch, ramp and tail included, timed as bench_linear times a linear (CUDA graph,
copies rotated past L2, medians). bytes / copy bandwidth leaves those costs out, and at the
batch-1 small layers they are most of the time (run 12's knockouts: qkv 7.6 µs without a weight
load, against a 4.4 µs floor). This gives issue 11's bars their physical floor per size.

The reader (sol_read.cu) sums every 32-bit word, checked against torch's sum on fresh random
bytes before anything is timed. Two readers, the fastest grid of each kept: 16-byte loads, 8 in
flight a thread (the decode kernels' way) and cp.async.bulk into a 4 x 32 KiB shared-memory ring
(sm_90+). Sizes: the 8B layers' W4A16 bytes (group 128: 0.5 + 3/128 bytes a weight), the grouped
MoE's two launches (Qwen3-30B-A3B at T = 1), and powers of two; then the MoE's two launches back
to back, with and without PDL, and the routed floor: one launch whose CTAs first read the 8
selected ids, then stream those experts' bytes out of all 128 (the address depends on the ids,
as in every routed kernel).

    python3 benchmarks/device/sol.py                     # on the device: the table
    python3 benchmarks/device/sol.py --json $OUT/sol.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from turbopack.inference.kernels import bench, cuda_build  # noqa: E402
from turbopack.inference.kernels.cuda_build import ptr  # noqa: E402

SRC = Path(__file__).with_name("sol_read.cu")
LDG, BULK = 0, 1
MiB = 1 << 20


def w4_bytes(n: int, k: int, group: int = 128) -> int:
    """Packed W4A16 bytes of an n x k weight: nibbles, and a bf16 scale + uint8 zero per group."""
    return n * k // 2 + n * (k // group) * 3


def sizes() -> dict[str, int]:
    layers = {f"8B {name}": w4_bytes(n, k) for name, (n, k) in bench.SHAPES.items()}
    # Qwen3-30B-A3B at T = 1: 8 experts' gate|up (2 x 768 x 2048), then their down (2048 x 768)
    moe = {"MoE gate_up": 8 * 2 * w4_bytes(768, 2048), "MoE down": 8 * w4_bytes(2048, 768)}
    moe["MoE in one launch"] = moe["MoE gate_up"] + moe["MoE down"]
    return {**layers, **moe, **{f"{m} MiB": m * MiB for m in (1, 2, 4, 8, 16, 32, 64, 128)}}


def library(dev: torch.device) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(cuda_build.build(SRC, torch.cuda.get_device_capability(dev))))
    lib.sol_read.restype = lib.sol_read_routed.restype = ctypes.c_int
    lib.sol_read.argtypes = [ctypes.c_void_p, ctypes.c_longlong, ctypes.c_void_p] + [ctypes.c_int] * 3 + [
        ctypes.c_void_p]
    lib.sol_read_routed.argtypes = [ctypes.c_void_p, ctypes.c_longlong, ctypes.c_void_p, ctypes.c_int,
                                    ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    return lib


def read(lib, buf: torch.Tensor, acc: torch.Tensor, ctas: int, mode: int, pdl: bool) -> None:
    rc = lib.sol_read(ptr(buf), buf.numel() // 16, ptr(acc), ctas, mode, int(pdl), cuda_build.stream(buf.device))
    if rc != 0:
        raise RuntimeError(f"sol_read failed (code {rc}; {buf.numel()} bytes, {ctas} CTAs, mode {mode})")


def read_routed(lib, experts: torch.Tensor, ids: torch.Tensor, acc: torch.Tensor, ctas: int, pdl: bool) -> None:
    per16 = experts.shape[1] // 16
    rc = lib.sol_read_routed(ptr(experts), per16, ptr(ids), ids.numel(), ptr(acc), ctas, int(pdl),
                             cuda_build.stream(experts.device))
    if rc != 0:
        raise RuntimeError(f"sol_read_routed failed (code {rc}; {ctas} CTAs)")


def routed(lib, grids: list[int], dev: torch.device, n_exp: int = 128, top_k: int = 8) -> dict:
    """The routed floor (Qwen3-30B-A3B's expert bytes at T = 1): checked, then timed over id sets
    that together touch every expert (so the selected bytes come from HBM), with and without PDL."""
    per = 2 * w4_bytes(768, 2048) + w4_bytes(2048, 768)
    experts = torch.randint(0, 255, (n_exp, per), dtype=torch.uint8, device=dev)
    sets = [torch.arange(i, i + top_k, dtype=torch.int32, device=dev) for i in range(0, n_exp, top_k)]
    acc = torch.zeros(1, dtype=torch.int32, device=dev)
    ids = torch.randperm(n_exp, device=dev)[:top_k].int()
    want = int(experts[ids.long()].view(torch.int32).to(torch.int64).sum().item()) % 2**32
    grids = sorted({top_k * -(-g // top_k) for g in grids})
    for ctas in grids:
        acc.zero_()
        read_routed(lib, experts, ids, acc, ctas, False)
        if int(acc.item()) % 2**32 != want:
            raise SystemExit(f"FAILED: routed read, {ctas} CTAs: sum {int(acc.item()) % 2**32:#x}, torch {want:#x}")
    out = {"bytes": top_k * per}
    for pdl in (False, True):
        out[f"us_pdl{int(pdl)}"] = min(
            bench.time_us([lambda i=i, c=ctas, p=pdl: read_routed(lib, experts, i, acc, c, p) for i in sets])
            for ctas in grids)
    return out


def check(lib, modes: list[int], grids: list[int], dev: torch.device) -> None:
    """Every reader and grid sums every word: against torch on random bytes of an uneven size."""
    buf = torch.randint(-2**31, 2**31 - 1, ((3 * MiB + 48) // 4,), dtype=torch.int32, device=dev)
    want = int(buf.to(torch.int64).sum().item()) % 2**32
    acc = torch.zeros(1, dtype=torch.int32, device=dev)
    for mode in modes:
        for ctas in [1] + grids:
            acc.zero_()
            read(lib, buf.view(torch.uint8), acc, ctas, mode, False)
            got = int(acc.item()) % 2**32
            if got != want:
                raise SystemExit(f"FAILED: mode {mode}, {ctas} CTAs: sum {got:#x}, torch {want:#x}")


def buffers(nbytes: int, dev: torch.device) -> list[torch.Tensor]:
    l2 = torch.cuda.get_device_properties(dev).L2_cache_size
    return [torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=dev) for _ in range(bench.n_copies(nbytes, l2))]


def fastest(lib, nbytes: int, modes: list[int], grids: list[int], dev: torch.device) -> dict:
    bufs = buffers(nbytes, dev)
    acc = torch.zeros(1, dtype=torch.int32, device=dev)
    best = None
    for mode in modes:
        for ctas in grids:
            us = bench.time_us([lambda b=b, c=ctas, m=mode: read(lib, b, acc, c, m, False) for b in bufs])
            if best is None or us < best["us"]:
                best = {"us": us, "mode": "bulk" if mode == BULK else "ldg", "ctas": ctas}
    return best


def chain(lib, first: int, second: int, best: dict[int, dict], dev: torch.device, pdl: bool) -> float:
    """µs per pair of dependent launches (each on its fastest reader), as gate_up then down."""
    acc = torch.zeros(1, dtype=torch.int32, device=dev)
    pairs = list(zip(buffers(first, dev), buffers(second, dev), strict=False))
    mode = {n: (BULK if best[n]["mode"] == "bulk" else LDG, best[n]["ctas"]) for n in (first, second)}

    def pair(a, b):
        read(lib, a, acc, mode[first][1], mode[first][0], pdl)
        read(lib, b, acc, mode[second][1], mode[second][0], pdl)

    return bench.time_us([lambda a=a, b=b: pair(a, b) for a, b in pairs])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("error: needs a CUDA device")
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    modes = [LDG, BULK] if torch.cuda.get_device_capability(dev) >= (9, 0) else [LDG]
    grids = [sms, 2 * sms, 4 * sms, 8 * sms]
    lib = library(dev)
    check(lib, modes, grids, dev)
    bw = max(bench.copy_bandwidth().values())
    rows, best = [], {}
    for name, nbytes in sizes().items():
        r = fastest(lib, nbytes, modes, grids, dev)
        best[nbytes] = r
        rows.append({"size": name, "bytes": nbytes, **r, "floor_us": nbytes / bw * 1e6})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    moe = sizes()
    pairs = {pdl: chain(lib, moe["MoE gate_up"], moe["MoE down"], best, dev, pdl) for pdl in (False, True)}
    route = routed(lib, grids, dev)
    print(f"{torch.cuda.get_device_name()}, copy bandwidth {bw / 1e12:.3f} TB/s; one launch reading B bytes")
    print("| size | MB | floor µs | one launch µs | reader, CTAs | % of copy bandwidth |")
    print("|---|---:|---:|---:|---|---:|")
    for r in rows:
        pct = 100 * r["floor_us"] / r["us"]
        print(f"| {r['size']} | {r['bytes'] / 1e6:.2f} | {r['floor_us']:.1f} | {r['us']:.1f} | {r['mode']}, "
              f"{r['ctas']} | {pct:.1f} |")
    floor = (moe["MoE gate_up"] + moe["MoE down"]) / bw * 1e6
    print(f"MoE T=1 (floor {floor:.1f} µs): two dependent launches {pairs[False]:.1f} µs, with PDL "
          f"{pairs[True]:.1f}; routed, one launch {route['us_pdl0']:.1f}, with PDL {route['us_pdl1']:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"copy_bw": bw, "rows": rows, "moe_pair_us": pairs, "routed": route},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
