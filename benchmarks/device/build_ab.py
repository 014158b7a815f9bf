#!/usr/bin/env python3
"""Diagnostic builds of w4.cu or moe_w4.cu against the shipped one, in the 8B step or the MoE layer.

w4.cu's are timed in the 8B W4A16 step, moe_w4.cu's (--src) in the grouped MoE layer.

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

--src moe_w4.cu: the grouped MoE decode at Qwen3-30B-A3B's shapes instead (bench_moe's inputs and
timer: graphs, expert stacks rotated past L2, medians; its default config), the same bits at T = 1
and 64 (the shipped build also against the float64 contract), then each T's layer alternating the
builds, µs:

    python3 benchmarks/device/build_ab.py --src moe_w4.cu --offline .scratch/ab moe128=TP_MOE_SLOT_ALIGN=128
    python3 benchmarks/device/build_ab.py --src moe_w4.cu --libs .scratch/ab.tar.xz --names moe128 --same-bits moe128

--table NAME=LIB:FILE adds an arm to the 8B step's timing: LIB's build (shipped or a variant) with
dispatch reading FILE instead of configs/sm90.json (table_variant.py writes such files), e.g. the
rows' warps per layer:

    python3 benchmarks/device/build_ab.py --libs .scratch/ab.tar.xz --names t1280 \
        --table glu8=shipped:.scratch/tables/glu8.json --table t1280glu8=t1280:.scratch/tables/glu8.json

A device diagnosis beside bench_e2e.py, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "benchmarks" / "device")]

import build_libs  # noqa: E402
import torch  # noqa: E402

from turbopack.inference.kernels import cuda_build, cuda_moe, cuda_w4  # noqa: E402

CAP = (9, 0)
SHIPPED = "shipped"
SOURCES = {"w4.cu": cuda_w4, "moe_w4.cu": cuda_moe}  # --src: the wrapper module that loads each
MOE_TOKENS = (1, 64)


def lib_file(folder: Path, mod, name: str) -> Path:
    """Variant ``name``'s build of ``mod``'s source in ``folder``, keyed by the source's text."""
    return cuda_build.lib_path(mod.SRC, CAP, f"ab-{name}", folder)


def parse_variant(text: str) -> tuple[str, tuple[str, ...]]:
    name, sep, defines = text.partition("=")
    if not sep or not name or not defines or name == SHIPPED:
        raise SystemExit(f"error: variant {text!r}: write NAME=DEFINE[,DEFINE...], e.g. nox=TP_KNOCKOUT=16")
    return name, tuple(defines.split(","))


def build(folder: Path, mod, variants: list[tuple[str, tuple[str, ...]]], jobs: int) -> None:
    build_libs.diagnostic(folder, CAP, [(mod.SRC, lib_file(folder, mod, name), defines) for name, defines in variants],
                          jobs)


def use(lib, mod=cuda_w4) -> None:
    """Route ``mod``'s calls to ``lib`` (its wrappers look ``library`` up at call time)."""
    mod.library = lambda device, lib=lib: lib


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


def table_arms(specs: list[str], libs: dict) -> dict[str, tuple]:
    """--table NAME=LIB:FILE: NAME times LIB's build (shipped, or a variant of --names) with dispatch
    reading FILE (a configs/<arch>.json) instead of the shipped table."""
    from turbopack.inference.kernels.table import KernelTable

    arms = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        lib, _, file = rest.partition(":")
        if not name or lib not in libs or not file or name in libs:
            raise SystemExit(f"error: --table {spec!r}: write NAME=LIB:FILE, LIB one of {', '.join(libs)}")
        arms[name] = (libs[lib], KernelTable.from_json(json.loads(Path(file).read_text()), file))
    return arms


def use_table(tbl) -> None:
    """dispatch resolves every call's config from ``tbl`` (None: the shipped table)."""
    from turbopack.inference.kernels import dispatch, table

    dispatch.kernel_table.load_table = table.load_table if tbl is None else (lambda arch, tbl=tbl: tbl)


def time_steps(libs: dict, reps: int, prompt: int, dev: torch.device, tables: dict) -> dict[str, list[float]]:
    from bench_e2e import build_8b
    from e2e_context import graph_step_ms

    model = build_8b("w4a16", 32)
    runs: dict[str, list[float]] = {}
    arms = {label: (lib, None) for label, lib in libs.items()} | tables
    for _ in range(reps):
        for label, (lib, tbl) in arms.items():
            use(lib)
            use_table(tbl)
            for b in (1, 8):
                ms = graph_step_ms(model, prompt, b)
                runs.setdefault(f"{label} / batch {b}", []).append(ms)
                print(f"{label:16s} batch {b}: {ms:.4f} ms", flush=True)
    return runs


def moe_layers(dev: torch.device) -> dict[int, tuple]:
    """Per T (MOE_TOKENS): bench_moe's Qwen3-30B-A3B layer (bench_moe.layer) and its default config."""
    import bench_moe

    shape = bench_moe.QWEN3_30B
    gen = torch.Generator(device="cuda").manual_seed(0)
    built = bench_moe.build(shape, "cuda", gen)
    layers = {}
    for t in MOE_TOKENS:
        lay = bench_moe.layer(t, shape, "cuda", built, gen)
        cfg = cuda_moe.default_config(t, shape["top_k"], shape["n_exp"], shape["hidden"], shape["inter"], dev)
        layers[t] = (lay.x2, lay.weights, lay.idx, cfg, lay.copies, lay.want)
    return layers


def moe_same_bits(libs: dict, layers: dict) -> None:
    """The MoE layer's y from every build in ``libs`` at each T: identical, the shipped build's within
    bench_moe's tolerance of the contract, or exit 1."""
    import bench_moe

    for t, (x2, weights, idx, cfg, copies, want) in layers.items():
        ys = {}
        for label, lib in libs.items():
            use(lib, cuda_moe)
            ys[label] = cuda_moe.grouped_moe_cuda(x2, weights, idx, *copies[0], cfg=cfg)
        bench_moe.check(f"{SHIPPED} build, T = {t}", ys[SHIPPED], want)
        for label, y in ys.items():
            if not torch.equal(ys[SHIPPED], y):
                raise SystemExit(f"error: MoE T = {t}: {label}'s y differs from the shipped build's")
    print(f"same bits as the shipped build in the MoE layer at T = {MOE_TOKENS}: {', '.join(list(libs)[1:])}",
          flush=True)


def moe_times(libs: dict, reps: int, layers: dict) -> dict[str, list[float]]:
    from turbopack.inference.kernels import bench

    runs: dict[str, list[float]] = {}
    for _ in range(reps):
        for label, lib in libs.items():
            use(lib, cuda_moe)
            for t, (x2, weights, idx, cfg, copies, _) in layers.items():
                us = bench.time_us([partial(cuda_moe.grouped_moe_cuda, x2, weights, idx, *s, cfg=cfg) for s in copies],
                                   min_calls=max(24, len(copies)))
                runs.setdefault(f"{label} / T {t}", []).append(us)
                print(f"{label:16s} T {t}: {us:.2f} us", flush=True)
    return runs


def open_libs(folder: Path, libs_arg: Path, mod, names: list[str], dev: torch.device) -> dict:
    found = {p.stem for p in folder.glob("*.so")}
    libs = {SHIPPED: mod.library(dev)}
    for name in names:
        path = lib_file(folder, mod, name)
        if path.stem not in found:
            raise SystemExit(f"error: {libs_arg} holds no build {name} of this {mod.SRC.name}: "
                             "rebuild it with --offline")
        libs[name] = cuda_build.open_library(path, dev, mod._SIGNATURES)
    return libs


def measure(args, mod, libs: dict, dev: torch.device) -> dict[str, list[float]]:
    """The same-bits check of --same-bits' builds, then the alternating timings."""
    checked = {k: libs[k] for k in [SHIPPED, *[n for n in args.same_bits.split(",") if n]]}
    if mod is cuda_moe:
        layers = moe_layers(dev)
        if len(checked) > 1:
            moe_same_bits(checked, layers)
        return moe_times(libs, args.reps, layers)
    if len(checked) > 1:
        same_bits(checked, dev)
    return time_steps(libs, args.reps, args.prompt, dev, table_arms(args.table, libs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="*", help="NAME=DEFINE[,DEFINE...] (--offline: build them)")
    ap.add_argument("--src", choices=sorted(SOURCES), default="w4.cu", help="the source the variants build")
    ap.add_argument("--offline", type=Path, help="build the variants into this folder (its .tar.xz beside it) and stop")
    ap.add_argument("--libs", type=Path, help="the folder an --offline run filled, or its .tar.xz")
    ap.add_argument("--names", default="", help="the variants to time, comma-separated (device)")
    ap.add_argument("--same-bits", default="", help="variants checked bit for bit against the shipped build first")
    ap.add_argument("--table", action="append", default=[], metavar="NAME=LIB:FILE",
                    help="also time LIB's build (shipped or a --names variant) under the kernel table FILE")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=32)
    args = ap.parse_args()
    mod = SOURCES[args.src]
    if args.offline:
        build(args.offline, mod, [parse_variant(v) for v in args.variants], args.jobs)
        return 0
    dev = torch.device("cuda")
    names = [n for n in args.names.split(",") if n]
    if not names and not args.table:
        raise SystemExit("error: name the variants to time (--names a,b) or the tables (--table)")
    libs = {SHIPPED: mod.library(dev)}  # --table alone: the shipped build under each table
    if names:
        libs = open_libs(build_libs.unpacked(args.libs), args.libs, mod, names, dev)
    shipped = mod.library
    try:
        runs = measure(args, mod, libs, dev)
    finally:
        mod.library = shipped
        use_table(None)
    unit = "us" if mod is cuda_moe else "ms"
    for key, v in runs.items():
        base, mean = statistics.mean(runs[f"{SHIPPED} / {key.split(' / ')[1]}"]), statistics.mean(v)
        print(f"{key:28s} mean {mean:.4f} {unit} ({(mean / base - 1) * 100:+.1f}%)  "
              f"({', '.join(f'{t:.4f}' for t in v)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
