"""Driver of the linear-kernel benchmark: check, (optionally) tune, time against the torch peers,
print the table and the issue's bars, write bench.json (and sm90.json with --tune) to --out.

    python benchmarks/bench_linear.py --tune --out $OUT          # on the GPU machine
    turbopack bench --formats w4a16 --shapes gate_up --ms 1,16
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

from turbopack.inference.kernels import bench, cuda_build, epilogue, pdl, tune
from turbopack.inference.kernels.config import KernelConfig, KernelName
from turbopack.inference.kernels.dispatch import device_arch, resolve_config
from turbopack.inference.kernels.table import Buckets, KernelTable, LayoutTable, load_table


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(setup: str, wt: bench.Weight, m: int, cands: list[KernelConfig], l2: int, peers: bool, gen) -> dict:
    n, k = wt.shape
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
    refs: dict[bool, torch.Tensor] = {}  # by "does the kernel keep fp8 activations 16-bit"
    tried = []
    for cfg in cands:
        try:
            key = cfg.kernel is KernelName.CUDA
            if key not in refs:
                refs[key] = bench.reference_out(wt, x, cfg)
            err = bench.check(wt, cfg, x, refs[key])
            if not err < bench.TOL:
                _log(f"  REJECTED {setup} {n}x{k} M={m} {cfg.describe()}: rel err {err:.2e}")
                continue
            us = bench.time_ours(wt, cfg, x)
            dirty = epilogue.dirty_zeroed_buffers()  # its own answer right, the next kernel's broken
            if dirty:
                _log(f"  REJECTED {setup} {n}x{k} M={m} {cfg.describe()}: left {'; '.join(dirty)}")
                continue
            tried.append((us, err, cfg))
        except Exception as e:  # a config that does not compile or launch is skipped, loudly
            _log(f"  FAILED {setup} {n}x{k} M={m} {cfg.describe()}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    if not tried:
        return {"setup": setup, "shape": [n, k], "m": m, "error": "no valid config"}
    tried.sort(key=lambda r: r[0])
    t, _, cfg = tried[0]
    x2 = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)   # fresh inputs for the winner
    err2 = bench.check(wt, cfg, x2)
    row = {"setup": setup, "layout": wt.layout_name, "shape": [n, k], "m": m, "us": t, "cfg": cfg, "rel_err": err2,
           "bytes": wt.nbytes + 2 * m * (n + k), "flops": 2 * m * n * k, "candidates": len(cands), "valid": len(tried),
           "runner_up": [[round(r[0], 2), r[2].to_json()] for r in tried[1:4]], "peers": {},
           "best_by_kernel": {r[2].kernel.value: [round(r[0], 2), r[2].to_json()] for r in reversed(tried)},
           "tried": [[round(r[0], 2), r[2].to_json()] for r in tried]}  # every valid candidate: A/Bs after the run
    if peers:
        for name, fns in bench.peers(wt, x, l2).items():
            try:
                row["peers"][name] = bench.time_us(fns)
            except Exception as e:
                _log(f"  peer {name} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return row


def fmt_row(r: dict, bw: float) -> str:
    if "error" in r:
        return f"{r['setup']:<10} {r['shape'][0]}x{r['shape'][1]:<6} M={r['m']:<5} {r['error']}"
    floor = r["bytes"] / bw * 1e6
    p = r["peers"]
    peer_txt = " ".join(f"{k}={v:.1f}({v / r['us']:.2f}x)" for k, v in p.items())
    c = r["cfg"].to_json()
    cfg_txt = ",".join(f"{k}={v}" for k, v in c.items() if k not in ("num_stages",)) + f",st={c.get('num_stages', '-')}"
    return (
        f"{r['setup']:<10} {r['shape'][0]:>5}x{r['shape'][1]:<5} M={r['m']:<5} {r['us']:8.1f}us "
        f"{r['bytes'] / r['us'] / 1e6:5.2f}TB/s {100 * floor / r['us']:5.1f}%BW {r['flops'] / r['us'] / 1e6:6.1f}TF "
        f"err={r['rel_err']:.1e} | {peer_txt} | {cfg_txt}"
    )


def bars(rows: list[dict], bw: float) -> list[str]:
    """The issue's bars, each a line PASS/MISS with the numbers."""
    by = {(r["setup"], tuple(r["shape"]), r["m"]): r for r in rows if "error" not in r}
    out = []
    names = {tuple(v): k for shapes in bench.MODELS.values() for k, v in shapes.items()}

    def line(ok: bool, what: str) -> None:
        out.append(f"{'PASS' if ok else 'MISS'}  {what}")

    for (setup, shape, m), r in sorted(by.items()):
        layer, p, t = names.get(shape, f"{shape}"), r["peers"], r["us"]
        if setup == "w4a16":
            if m == 1 and layer in ("gate_up", "down"):
                pct = 100 * r["bytes"] / bw * 1e6 / t
                line(pct >= 85, f"w4a16 {layer} M=1: {pct:.1f}% of copy bandwidth (>= 85%)")
            if m == 1 and "tinygemm" in p:
                line(p["tinygemm"] / t >= 1.5, f"w4a16 {layer} M=1: {p['tinygemm'] / t:.2f}x tinygemm (>= 1.5x)")
            if m == 16 and (setup, shape, 1) in by:
                ratio = t / by[(setup, shape, 1)]["us"]
                line(ratio <= 1.25, f"w4a16 {layer} M=16: {ratio:.2f}x its M=1 time (<= 1.25x)")
            if "bf16" in p:
                line(t <= 1.15 * p["bf16"], f"w4a16 {layer} M={m}: {t / p['bf16']:.2f}x bf16 cuBLAS time (<= 1.15x)")
        elif setup == "w8a16" and m == 1 and "bf16" in p:
            line(p["bf16"] / t >= 1.8, f"w8a16 {layer} M=1: {p['bf16'] / t:.2f}x faster than bf16 (>= 1.8x)")
        elif setup in ("w8a8", "fp8"):
            if "torch_path" in p:
                line(
                    t <= 1.05 * p["torch_path"],
                    f"{setup} {layer} M={m}: {t / p['torch_path']:.2f}x the torch path (<= 1.05x)",
                )
            if m >= 256 and "bf16" in p:
                speedup = p["bf16"] / t
                line(speedup >= 1.3, f"{setup} {layer} M={m}: {speedup:.2f}x faster than bf16 (>= 1.3x from M=256)")
    return out


def config_table(rows: list[dict], props) -> dict:
    """Winners as configs/<arch>.json: per layout, per "NxK", per M bucket; the 4096x4096 winners
    (split-K left to the default heuristic) are the layout's default."""
    shapes: dict[str, dict[str, dict[int, KernelConfig]]] = {}
    defaults: dict[str, dict[int, KernelConfig]] = {}
    for r in rows:
        if "error" in r:
            continue
        cfg: KernelConfig = r["cfg"]
        shapes.setdefault(r["layout"], {}).setdefault(f"{r['shape'][0]}x{r['shape'][1]}", {})[r["m"]] = cfg
        default = defaults.setdefault(r["layout"], {})
        if tuple(r["shape"]) == bench.SHAPES["o"]:
            default[r["m"]] = dataclasses.replace(cfg, split_k=_default_split(cfg))
    arch = device_arch(torch.device("cuda"))
    shipped = load_table(arch).layouts
    measured = {name: _over(shipped.get(name), LayoutTable(defaults[name], by_shape))
                for name, by_shape in shapes.items()}
    meta = {"device": props.name, "measured": datetime.date.today().isoformat(),
            "source": "benchmarks/bench_linear.py --tune"}
    # layouts this run did not measure keep their shipped entries
    return KernelTable(arch, {**shipped, **measured}, meta).to_json()


def _default_split(cfg: KernelConfig) -> int | None:
    """A winner's SPLIT_K in the layout's default: split-K is shape-specific, so 0 (the CUDA kernels'
    own rule) or none (Triton's); the decode by rows' SPLIT_K is its warps a CTA, not a split, and
    stays (tune.ROWS_VARIANTS)."""
    if cfg.kernel not in (KernelName.CUDA, KernelName.CUDA_MM, KernelName.CUDA_WG, KernelName.CUDA_WS) \
            or cfg.split_k is None:
        return None
    return cfg.split_k if cfg.kernel is KernelName.CUDA and cfg.variant in tune.ROWS_VARIANTS else 0


def _over(old: LayoutTable | None, new: LayoutTable) -> LayoutTable:
    """``new``'s buckets over ``old``'s, shape by shape: a run at some M (--ms 1,16) keeps the
    shipped winners of the M it did not measure."""
    if old is None:
        return new

    def merged(was: Buckets, now: Buckets) -> dict[int, KernelConfig]:
        return dict(sorted({**was, **{m: _keep_glu(was.get(m), cfg) for m, cfg in now.items()}}.items()))

    shapes = {s: merged(old.shapes.get(s, {}), new.shapes.get(s, {})) for s in {*old.shapes, *new.shapes}}
    return LayoutTable(merged(old.default, new.default), dict(sorted(shapes.items())))


def _keep_glu(was: KernelConfig | None, now: KernelConfig) -> KernelConfig:
    """GLU_WARPS is measured by benchmarks/device/glu_rows.py, not by this tuner: a re-tuned entry keeps
    the shipped GLU_WARPS where its plain config is the one the GLU was measured beside, else drops
    it (dispatch.glu then follows SPLIT_K)."""
    if was is None or was.glu_warps is None or now.glu_warps is not None:
        return now
    return was if dataclasses.replace(was, glu_warps=None) == now else now


def _json(o: object) -> object:
    """bench.json's rows hold KernelConfigs: written as the tuner's JSON objects."""
    if isinstance(o, KernelConfig):
        return o.to_json()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--formats", default="w4a16,nvfp4,w8a16,w8a8,fp8", help=f"of {','.join(bench.SETUPS)}")
    ap.add_argument("--model", default="llama3-8b", help=f"whose layer shapes: {', '.join(bench.MODELS)}")
    ap.add_argument("--shapes", default=",".join(bench.SHAPES), help="of qkv,o,gate_up,down")
    ap.add_argument("--ms", default=",".join(map(str, bench.MS)))
    ap.add_argument("--tune", action="store_true", help="sweep candidate configs (else: the shipped table)")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--jobs", type=int, default=12, help="processes compiling ahead (--tune)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for bench.json / sm90.json")
    return ap.parse_args(argv)


def _build_cuda_libraries() -> None:
    """Build the CUDA W4 kernels once, before the timing starts (nvcc at first use)."""
    try:
        from turbopack.inference.kernels import cuda_w4, cuda_w4mm, cuda_w4wg

        hopper = torch.cuda.get_device_capability() == cuda_w4wg.CAPABILITY
        for mod in (cuda_w4, cuda_w4mm, *([cuda_w4wg] if hopper else [])):
            t0 = time.time()
            mod.library(torch.device("cuda"))
            _log(f"built {mod.SRC.name} in {time.time() - t0:.1f}s")
    except Exception as e:
        _log(f"CUDA decode kernel unavailable: {type(e).__name__}: {e}")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    for what, given, known in (("format", args.formats, bench.SETUPS), ("shape", args.shapes, bench.SHAPES),
                               ("model", args.model, bench.MODELS)):
        unknown = [g for g in given.split(",") if g not in known]
        if unknown:
            print(f"error: unknown {what} {unknown[0]!r}; registered: {', '.join(known)}", file=sys.stderr)
            return 2
    if not all(m.isdigit() and int(m) > 0 for m in args.ms.split(",")):
        print(f"error: --ms takes positive integers, got {args.ms!r}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("error: the benchmark needs a CUDA device", file=sys.stderr)
        return 2
    # PDL off unless asked: a graph of one linear back to back is not how the runtime chains its
    # kernels (pdl.py), and the shipped table was tuned without it
    os.environ.setdefault(pdl.ENV, "0")
    cuda_build.refresh_pdl()
    import triton

    props = torch.cuda.get_device_properties(0)
    sms, l2 = props.multi_processor_count, props.L2_cache_size
    setups, shapes, dims = args.formats.split(","), args.shapes.split(","), bench.MODELS[args.model]
    ms = [int(m) for m in args.ms.split(",")]
    t_start = time.time()
    bws = bench.copy_bandwidth()
    bw = max(bws.values())
    _log(f"{props.name} sm{props.major}{props.minor} SMs={sms} L2={l2 >> 20}MB torch {torch.__version__} "
         f"triton {triton.__version__}; copy bandwidth (read+write) memcpy {bws['memcpy'] / 1e12:.3f} TB/s, "
         f"copy kernel {bws['kernel'] / 1e12:.3f} TB/s; the floor uses {bw / 1e12:.3f}")
    if "w4a16" in setups:
        _build_cuda_libraries()
    if args.tune:
        tasks = [(s, dims[n], m, c) for s in setups for n in shapes for m in ms
                 for c in tune.candidates(s, *dims[n], m, sms)]
        for e in tune.precompile(tasks, args.jobs):
            _log(f"  compile: {e}")
        _log(f"precompiled in {time.time() - t_start:.0f}s")
    gen = torch.Generator(device="cuda").manual_seed(int(time.time()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device": props.name, "copy_bw": bw, "copy_bw_all": bws, "torch": torch.__version__,
            "triton": triton.__version__, "argv": sys.argv, "date": datetime.date.today().isoformat()}
    rows: list[dict] = []

    def save() -> None:  # after every layer, so a run cut short still leaves its numbers
        (out / "bench.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=_json))
        if args.tune:
            (out / f"{device_arch(torch.device('cuda'))}.json").write_text(
                json.dumps(config_table(rows, props), indent=1)
            )

    for setup in setups:
        for name in shapes:
            n, k = dims[name]
            wt = bench.make_weight(setup, (n, k), l2, gen)
            for m in ms:
                cands = tune.candidates(setup, n, k, m, sms) if args.tune else \
                    [resolve_config(wt.layout_name, wt.fmt, n, k, m, torch.device("cuda"))]
                rows.append(measure(setup, wt, m, cands, l2, not args.no_peers, gen))
                _log(fmt_row(rows[-1], bw) + f"   [{time.time() - t_start:.0f}s]")
            del wt
            torch.cuda.empty_cache()
            save()
    _report(rows, props.name, bw)
    print(f"total {time.time() - t_start:.0f}s")
    return 0


def _report(rows: list[dict], device: str, bw: float) -> None:
    """The table on stdout (the log on stderr had each row as it came), then the bars."""
    print(f"\n{device}, copy bandwidth {bw / 1e12:.3f} TB/s, µs per call (CUDA graph, weights rotated past L2)")
    for r in rows:
        print(fmt_row(r, bw))
    print()
    for b in bars(rows, bw):
        print(b)


if __name__ == "__main__":
    sys.exit(main())
