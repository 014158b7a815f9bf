#!/usr/bin/env python3
"""Builds of w4.cu with diagnostic defines against the shipped one, in the 8B W4A16 step.

Each variant is NAME=DEFINE[,DEFINE...] (-D flags of nvcc, csrc's knobs): a knob that keeps the
math (TP_ROWSX_SLOT_ALIGN=16: the rows' ring slots unaligned, as before run 23) is first checked against the
shipped build on the 8B layers (plain and gate|up's GLU, M = 1 and 8, bit for bit: --same-bits);
a knockout (TP_KNOCKOUT=<mask>, csrc/common.cuh: wrong answers by design) is a timing only, the
upper bound of what fixing that part could save.
Then the step (the graph timer of bench_e2e's
8B model) alternating the shipped build and every variant in one process, --reps times, batch 1
and 8, since the step drifts 2-3% within a process and the first of a list runs fastest.

    python3 benchmarks/device/build_ab.py --offline .scratch/ab slot16=TP_ROWSX_SLOT_ALIGN=16 nox=TP_KNOCKOUT=16
    python3 benchmarks/device/build_ab.py --libs .scratch/ab.tar.xz --names slot16,nox \
        --same-bits slot16    # device (carry the archive)

A device diagnosis beside bench_e2e.py, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "benchmarks" / "device")]

import build_libs  # noqa: E402
import torch  # noqa: E402

from turbopack.inference.kernels import cuda_build, cuda_w4  # noqa: E402

CAP = (9, 0)
SHIPPED = "shipped"


def lib_file(folder: Path, name: str) -> Path:
    """Variant ``name``'s build of w4.cu in ``folder``, keyed by the source's text."""
    return cuda_build.lib_path(cuda_w4.SRC, CAP, f"ab-{name}", folder)


def parse_variant(text: str) -> tuple[str, tuple[str, ...]]:
    name, sep, defines = text.partition("=")
    if not sep or not name or not defines or name == SHIPPED:
        raise SystemExit(f"error: variant {text!r}: write NAME=DEFINE[,DEFINE...], e.g. nox=TP_KNOCKOUT=16")
    return name, tuple(defines.split(","))


def build(folder: Path, variants: list[tuple[str, tuple[str, ...]]], jobs: int) -> None:
    build_libs.diagnostic(folder, CAP, [(cuda_w4.SRC, lib_file(folder, name), defines) for name, defines in variants],
                          jobs)


def use(lib) -> None:
    """Route cuda_w4's calls to ``lib``."""
    cuda_w4.library = lambda device, lib=lib: lib


def same_bits(libs: dict, dev: torch.device) -> None:
    """Each 8B layer's y (gate|up: its GLU) from every build in ``libs``, at M = 1 and 8: identical, or exit 1."""
    from turbopack.formats import get_format
    from turbopack.inference.config import Activation
    from turbopack.inference.kernels import reference

    fmt = get_format("w4a16", group_size=128, sym=False, scale_dtype="bfloat16")
    for n, k, glu in ((6144, 4096, None), (4096, 4096, None), (28672, 4096, Activation.SILU), (4096, 14336, None)):
        torch.manual_seed(n + k)
        packed = reference.pack_w4(fmt.quantize(torch.randn(n, k, device=dev)), 64)
        for m in (1, 2, 4, 8):
            x = torch.randn(m, k, device=dev).bfloat16()
            ys = {}
            for label, lib in libs.items():
                use(lib)
                ys[label] = cuda_w4.w4_decode(x, packed, (n, k), None, 16 if glu else 8, group=128,
                                              variant=cuda_w4.ROWS_X, glu=glu)
            first = next(iter(ys.values()))
            for label, y in ys.items():
                if not torch.equal(first, y):
                    raise SystemExit(f"error: {n}x{k} M={m}: {label}'s y differs from the shipped build's")
    print(f"same bits as the shipped build on the 8B layers at M = 1, 2, 4, 8: {', '.join(list(libs)[1:])}", flush=True)


def time_steps(libs: dict, reps: int, prompt: int, dev: torch.device) -> dict[str, list[float]]:
    from bench_e2e import build_8b
    from e2e_context import graph_step_ms

    model = build_8b("w4a16", 32)
    runs: dict[str, list[float]] = {}
    for _ in range(reps):
        for label, lib in libs.items():
            use(lib)
            for b in (1, 8):
                ms = graph_step_ms(model, prompt, b)
                runs.setdefault(f"{label} / batch {b}", []).append(ms)
                print(f"{label:16s} batch {b}: {ms:.4f} ms", flush=True)
    return runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="*", help="NAME=DEFINE[,DEFINE...] (--offline: build them)")
    ap.add_argument("--offline", type=Path, help="build the variants into this folder (its .tar.xz beside it) and stop")
    ap.add_argument("--libs", type=Path, help="the folder an --offline run filled, or its .tar.xz")
    ap.add_argument("--names", default="", help="the variants to time, comma-separated (device)")
    ap.add_argument("--same-bits", default="", help="variants checked bit for bit against the shipped build first")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=32)
    args = ap.parse_args()
    if args.offline:
        build(args.offline, [parse_variant(v) for v in args.variants], args.jobs)
        return 0
    dev = torch.device("cuda")
    folder = build_libs.unpacked(args.libs)
    found = {p.stem for p in folder.glob("*.so")}
    names = [n for n in args.names.split(",") if n]
    if not names:
        raise SystemExit("error: name the variants to time (--names a,b)")
    libs = {SHIPPED: cuda_w4.library(dev)}
    for name in names:
        path = lib_file(folder, name)
        if path.stem not in found:
            raise SystemExit(f"error: {args.libs} holds no build {name} of this w4.cu: rebuild it with --offline")
        libs[name] = cuda_build.open_library(path, dev, cuda_w4._SIGNATURES)
    shipped = cuda_w4.library
    try:
        checked = [n for n in args.same_bits.split(",") if n]
        if checked:
            same_bits({k: libs[k] for k in [SHIPPED, *checked]}, dev)
        runs = time_steps(libs, args.reps, args.prompt, dev)
    finally:
        cuda_w4.library = shipped
    base = {b: statistics.mean(runs[f"{SHIPPED} / batch {b}"]) for b in (1, 8)}
    for key, v in runs.items():
        b = int(key.rsplit(" ", 1)[1])
        mean = statistics.mean(v)
        print(f"{key:28s} mean {mean:.4f} ms ({(mean / base[b] - 1) * 100:+.1f}%)  "
              f"({', '.join(f'{t:.4f}' for t in v)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
