#!/usr/bin/env python3
"""What each part of the batch-1 W4 decode and the grouped MoE costs on the device (issue 11's
small layers at 18-37% of copy bandwidth, issue 14's MoE layer at T = 1 at 26%). H200.md's method
where counters cannot say it: build the kernels again with parts left out (-DTP_KNOCKOUT=<mask>,
csrc/common.cuh: the split-K store, the math, the weight copies, the scale copies), time each
build beside the real one on the same inputs, and read the differences.

The knocked-out builds compute wrong results by design. The real build (mask 0, the same source)
is checked against the reference of its contract before anything is timed.

    python3 benchmarks/device/knockout.py --offline .scratch/knockout   # CPU machine: build (sm_90a)
    python3 benchmarks/device/knockout.py --libs .scratch/knockout.tar.xz   # device: time (carry it)
    python3 benchmarks/device/knockout.py                               # device: build there, then time
    python3 benchmarks/device/knockout.py --only ws ...                 # the warp-specialized GEMMs

Dense: the 8B shapes at M = 1 on the shipped table's configs (bench_linear's method: CUDA graphs,
weights rotated past L2, medians). MoE: Qwen3-30B-A3B at T = 1 on the default config, with and
without PDL (bench_moe's method); since run 13 that is the few-token kernels (csrc/moe_token.cuh),
which have no split-K store: their "no split-K store" build is the real one. ws: the warp-specialized
prefill GEMMs (cuda_w4ws, cuda_i8ws) at gate_up and qkv, M = 256 and 2048, on one tile each (run 31's
ncu: the W4 consumers wait on their full barriers half the time; is it the copies, the decode or the
tensor core?). Prints one table: µs per variant, and the difference from the real build.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from turbopack.inference.kernels import cuda_build, cuda_i8ws, cuda_moe, cuda_w4, cuda_w4ws  # noqa: E402

_spec = importlib.util.spec_from_file_location("build_libs", Path(__file__).with_name("build_libs.py"))
build_libs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_libs)

#: csrc/common.cuh's knockout bits
STORE, MATH, LOAD, SCALES, X, DECODE, EPILOGUE = 1, 2, 4, 8, 16, 32, 64
DENSE_VARIANTS = {  # name: mask
    "real": 0, "no split-K store": STORE, "no math": MATH, "no weight loads": LOAD,
    # run 12's "no weight loads" still waited on each stage's scale copies: this one waits on nothing
    "no copies": LOAD | SCALES,
    "skeleton": LOAD | SCALES | MATH,  # launch, routing, x, the sums of x, the store
    "no x loads": X,  # load_x's per-stage reads (constant fragments; the rows then read x per stage)
}
WS_VARIANTS = {  # the producer's copies (x, weights, scales) and the consumers' decode and wgmmas
    "real": 0, "no wgmma": MATH, "no decode": DECODE, "no decode, wgmma": MATH | DECODE, "no x copy": X,
    "no w copies": LOAD | SCALES, "no copies": X | LOAD | SCALES, "skeleton": X | LOAD | SCALES | MATH | DECODE,
    "no epilogue": EPILOGUE, "skeleton, no epilogue": X | LOAD | SCALES | MATH | DECODE | EPILOGUE,
}
I8_VARIANTS = {"real": 0, "no wgmma": MATH, "no x copy": X, "no w copy": LOAD, "no copies": X | LOAD,
               "skeleton": X | LOAD | MATH, "no epilogue": EPILOGUE,
               "skeleton, no epilogue": X | LOAD | MATH | EPILOGUE}
#: each library's variants
VARIANTS = {cuda_w4: DENSE_VARIANTS, cuda_moe: DENSE_VARIANTS, cuda_w4ws: WS_VARIANTS, cuda_i8ws: I8_VARIANTS}
MODULES = (cuda_w4, cuda_moe)
CAP = (9, 0)


def lib_file(folder: Path, mod, mask: int) -> Path:
    """The (mask) build of ``mod``'s source in ``folder``, named by the source's text and headers
    (cuda_build.lib_path's key): a build of an older source is never taken for the current one."""
    return cuda_build.lib_path(mod.SRC, CAP, f"knockout-{mask}", folder)


def build_all(folder: Path, jobs: int, modules=MODULES) -> None:
    """Every (library, mask) into ``folder``, in parallel (w4.cu ~100 s, moe_w4.cu ~25 s each)."""
    build_libs.diagnostic(folder, CAP, [(mod.SRC, lib_file(folder, mod, mask), (f"TP_KNOCKOUT={mask}",))
                                        for mod in modules for mask in VARIANTS[mod].values()], jobs)


def use(mod, folder: Path, mask: int, dev: torch.device) -> None:
    """Point ``mod``'s wrappers at the (mask) build: their calls look ``library`` up at call time."""
    lib = cuda_build.open_library(lib_file(folder, mod, mask), dev, mod._SIGNATURES)
    mod.library = lambda device, lib=lib: lib


def time_variants(mod, folder: Path, dev: torch.device, time_fn, check_fn) -> dict:
    """Each variant's time (the ones ``folder`` holds), the real build checked first; the real build
    is timed again last, and its two times are reported as "real" (the mean) and "drift" (last -
    first): a difference that the drift does not dwarf is the part's cost, not clocks warming up."""
    if not lib_file(folder, mod, 0).exists():
        raise SystemExit(f"error: {folder} has no build of this {mod.SRC.name} (another source's archive?): "
                         "rebuild it with --offline")
    masks = [(label, m) for label, m in VARIANTS[mod].items() if lib_file(folder, mod, m).exists()]
    use(mod, folder, 0, dev)
    out = {"rel_err": check_fn()}
    time_fn()  # discarded: the float64 check just ran (a suspect for run 12's 2.8 µs at gate_up)
    for label, mask in masks + [("real again", 0)]:
        use(mod, folder, mask, dev)
        out[label] = time_fn()
    first, last = out["real"], out.pop("real again")
    out["real"], out["drift"] = (first + last) / 2, last - first
    return out


def dense(folder: Path, dev: torch.device) -> list[dict]:
    from turbopack.inference.kernels import bench
    from turbopack.inference.kernels.dispatch import resolve_config

    l2 = torch.cuda.get_device_properties(dev).L2_cache_size
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for name, (n, k) in bench.SHAPES.items():
        wt = bench.make_weight("w4a16", (n, k), l2, gen)
        cfg = resolve_config(wt.layout_name, wt.fmt, n, k, 1, dev)
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16, generator=gen)
        row = {"layer": name, "shape": [n, k], "cfg": cfg.describe(), "bytes": wt.nbytes}

        def check(name=name, wt=wt, cfg=cfg, x=x):
            err = bench.check(wt, cfg, x)
            if not err < bench.TOL:
                raise SystemExit(f"FAILED: {name}: the real build is {err:.2e} from the reference")
            return err

        row.update(time_variants(cuda_w4, folder, dev, lambda wt=wt, cfg=cfg, x=x: bench.time_ours(wt, cfg, x), check))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        del wt
        torch.cuda.empty_cache()
    return rows


def moe(folder: Path, dev: torch.device) -> list[dict]:
    import bench_moe

    from turbopack.inference.kernels import bench

    shape, t = bench_moe.QWEN3_30B, 1
    gen = torch.Generator(device="cuda").manual_seed(0)
    lay = bench_moe.layer(t, shape, "cuda", bench_moe.build(shape, "cuda", gen), gen)
    x2, weights, idx, nbytes, copies, want = lay.x2, lay.weights, lay.idx, lay.nbytes, lay.copies, lay.want
    stacks = copies[0]
    default = cuda_moe.default_config(t, shape["top_k"], shape["n_exp"], shape["hidden"], shape["inter"], dev)
    rows = []
    for cfg, tag in ((default, ""), (dataclasses.replace(default, pdl=False), " no PDL")):
        row = {"layer": f"MoE T={t}{tag}", "cfg": str(cfg), "bytes": nbytes}
        row.update(time_variants(
            cuda_moe, folder, dev,
            lambda c=cfg: bench.time_us([lambda s=s, c=c: cuda_moe.grouped_moe_cuda(x2, weights, idx, *s, cfg=c)
                                         for s in copies], min_calls=max(24, len(copies))),
            lambda c=cfg: bench_moe.check("real build", cuda_moe.grouped_moe_cuda(x2, weights, idx, *stacks, cfg=c),
                                          want)))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def ws(folder: Path, dev: torch.device) -> list[dict]:
    """The warp-specialized GEMMs' variants: W4A16 at 128 x 256 / 5 stages, W8A8 at BM 256 / 4."""
    from functools import partial

    from turbopack.inference.kernels import bench, reference
    from turbopack.inference.kernels.config import KernelConfig, KernelName
    from turbopack.inference.kernels.dispatch import linear

    l2 = torch.cuda.get_device_properties(dev).L2_cache_size
    gen = torch.Generator(device="cuda").manual_seed(0)
    cfg8 = KernelConfig(KernelName.CUDA_WS, block_m=256, ring_stages=4, split_k=1)
    rows = []
    for setup, mod in (("w4a16", cuda_w4ws), ("w8a8", cuda_i8ws)):
        for name in ("gate_up", "qkv"):
            shape = bench.SHAPES[name]
            wt = bench.make_weight(setup, shape, l2, gen)
            for m in (256, 2048):
                x = torch.randn(m, shape[1], device="cuda", dtype=torch.bfloat16, generator=gen)
                if mod is cuda_w4ws:
                    call = partial(cuda_w4ws.w4_wgws, bn=128, bm=256, stages=5, split_k=1)
                    fns = [partial(call, x, p, shape, None) for p in wt.copies]
                else:
                    fns = [partial(linear, x, wt.fmt, wt.layout_name, p, shape, None, cfg8) for p in wt.copies]
                ref = reference.ref_linear(x, setup, wt.q)
                bf16 = bench.time_us([partial(torch.nn.functional.linear, x, w) for w in bench.bf16_weights(wt, l2)])
                row = {"layer": f"{setup} {name} M={m} (bf16 {bf16:.1f})", "bytes": wt.nbytes}

                def check(fn=fns[0], ref=ref, label=row["layer"]):
                    err = reference.rel_err(fn(), ref)
                    if not err < bench.TOL:
                        raise SystemExit(f"FAILED: {label}: the real build is {err:.2e} from the reference")
                    return err

                row.update(time_variants(mod, folder, dev, lambda fns=fns: bench.time_us(fns), check))
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
            del wt
            torch.cuda.empty_cache()
    return rows


def table(rows: list[dict], bw: float) -> str:
    labels = list(dict.fromkeys(v for r in rows for v in r if v not in ("layer", "shape", "cfg", "bytes", "rel_err",
                                                                        "drift")))
    out = ["| layer | bytes MB | floor µs | drift µs | " + " | ".join(labels) + " |",
           "|---|---:|---:|---:|" + "---:|" * len(labels)]
    for r in rows:
        real = r["real"]
        cells = [f"{real:.1f}"] + [f"{r[v]:.1f} ({r[v] - real:+.1f})" if v in r else "-" for v in labels[1:]]
        head = f"| {r['layer']} | {r['bytes'] / 1e6:.2f} | {r['bytes'] / bw * 1e6:.1f} | {r['drift']:+.1f} | "
        out.append(head + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--offline", type=Path, help="build every variant into this folder and stop (no GPU needed)")
    p.add_argument("--libs", type=Path, help="the folder an --offline run filled, or its .tar.xz (else: build here)")
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    p.add_argument("--only", choices=("dense", "moe", "ws"), help="build and time one library's variants")
    args = p.parse_args(argv)
    modules = {"dense": (cuda_w4,), "moe": (cuda_moe,), "ws": (cuda_w4ws, cuda_i8ws)}.get(args.only, MODULES)
    if args.offline:
        build_all(args.offline, args.jobs, modules)
        return 0
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != CAP:
        raise SystemExit("error: the knockout builds are sm_90a: this needs an H100/H200")
    folder = build_libs.unpacked(args.libs) if args.libs else Path("/tmp/knockout")
    if not args.libs:  # a carried folder (or its archive) is used as it is: the variants it holds
        build_all(folder, args.jobs, modules)
    from turbopack.inference.kernels import bench

    dev = torch.device("cuda")
    bw = max(bench.copy_bandwidth().values())
    rows = (dense(folder, dev) if cuda_w4 in modules else []) + (moe(folder, dev) if cuda_moe in modules else [])
    rows += ws(folder, dev) if cuda_w4ws in modules else []
    print(f"{torch.cuda.get_device_name()}, copy bandwidth {bw / 1e12:.3f} TB/s; µs (difference from the real build)")
    print(table(rows, bw))
    if args.out:
        args.out.write_text(json.dumps({"copy_bw": bw, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
