#!/usr/bin/env python3
"""The W4 rows with x per stage (VARIANT 6) with its ring slots aligned to 128 bytes, against the
shipped build, in the 8B W4A16 step: run 21's lead (docs/kernels.md, "What limits the rows with x
per stage at batch 1"). A slot is 1072 bytes at group 128, asym, so most slots start off a 128-byte
row and each 256-byte LDS.64 of a stage's weights takes three wavefronts where two would do; the
build with -DTP_ROWSX_SLOT_ALIGN=128 (csrc/w4_rowsx.cuh) pads a slot to 1152.

First the two builds' y on the 8B layers (plain and gate|up's GLU, M = 1 and 8): the math and its
order are the same, so bit for bit. Then the step (timeline.py's graph timer) alternating the two
builds in one process, --reps times, batch 1 and 8; means and each run.

    python3 benchmarks/device/slot_align.py --offline .scratch/slot128    # CPU machine: build (sm_90a)
    python3 benchmarks/device/slot_align.py --libs .scratch/slot128.tar.xz   # device (carry it)

A device diagnosis beside bench_e2e.py, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "benchmarks" / "device")]

import build_libs  # noqa: E402
import torch  # noqa: E402

from turbopack.inference.kernels import cuda_build, cuda_w4  # noqa: E402

CAP = (9, 0)
DEFINE = "TP_ROWSX_SLOT_ALIGN=128"


def lib_file(folder: Path) -> Path:
    """The padded build of w4.cu in ``folder``, keyed by the source's text (an older source's is never taken)."""
    return cuda_build.lib_path(cuda_w4.SRC, CAP, "slot128", folder)


def build(folder: Path) -> None:
    compiler = cuda_build.nvcc()
    if compiler is None:
        raise SystemExit("error: nvcc not found")
    folder.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(cuda_build.nvcc_command(compiler, cuda_w4.SRC, CAP, lib_file(folder), (DEFINE,)),
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-2000:])
    print(f"built {lib_file(folder).name}", file=sys.stderr)
    build_libs.archive(folder)


def same_bits(libs: dict, dev: torch.device) -> None:
    """Each 8B layer's y (gate|up: its GLU) from both builds, at M = 1 and 8: identical, or exit 1."""
    from turbopack.formats import get_format
    from turbopack.inference.config import Activation
    from turbopack.inference.kernels import reference

    fmt = get_format("w4a16", group_size=128, sym=False, scale_dtype="bfloat16")
    for n, k, glu in ((6144, 4096, None), (4096, 4096, None), (28672, 4096, Activation.SILU), (4096, 14336, None)):
        torch.manual_seed(n + k)
        packed = reference.pack_w4(fmt.quantize(torch.randn(n, k, device=dev)), 64)
        for m in (1, 8):
            x = torch.randn(m, k, device=dev).bfloat16()
            ys = {}
            for label, lib in libs.items():
                cuda_w4.library = lambda device, lib=lib: lib
                ys[label] = cuda_w4.w4_decode(x, packed, (n, k), None, 16 if glu else 8, group=128,
                                              variant=cuda_w4.ROWS_X, glu=glu)
            if not torch.equal(*ys.values()):
                raise SystemExit(f"error: {n}x{k} M={m}: the builds' y differ")
    print("the two builds' y: bit for bit on the 8B layers at M = 1 and 8", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--offline", type=Path, help="build the padded library into this folder and stop")
    ap.add_argument("--libs", type=Path, help="the folder an --offline run filled, or its .tar.xz")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=32)
    args = ap.parse_args()
    if args.offline:
        build(args.offline)
        return 0
    from bench_e2e import build_8b
    from e2e_context import graph_step_ms

    dev = torch.device("cuda")
    folder = build_libs.unpacked(args.libs)
    if not lib_file(folder).exists():
        raise SystemExit(f"error: {args.libs} holds no padded build of this w4.cu: rebuild it with --offline")
    libs = {"align 16 (shipped)": cuda_w4.library(dev),
            "align 128": cuda_build.open_library(lib_file(folder), dev, cuda_w4._SIGNATURES)}
    shipped = cuda_w4.library
    try:
        same_bits(libs, dev)
        model = build_8b("w4a16", 32)
        runs: dict[str, list[float]] = {}
        for _ in range(args.reps):
            for label, lib in libs.items():
                cuda_w4.library = lambda device, lib=lib: lib
                for b in (1, 8):
                    ms = graph_step_ms(model, args.prompt, b)
                    runs.setdefault(f"{label} / batch {b}", []).append(ms)
                    print(f"{label:20s} batch {b}: {ms:.4f} ms", flush=True)
    finally:
        cuda_w4.library = shipped
    for key, v in runs.items():
        print(f"{key:32s} mean {statistics.mean(v):.4f} ms  ({', '.join(f'{t:.4f}' for t in v)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
