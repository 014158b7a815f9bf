#!/usr/bin/env python3
"""The CUDA W4A16 decode kernel's variants side by side (csrc/w4.cu: VARIANT unset = v5, 1 = v6, 2 = v7,
3 = v8) at the Llama-3-8B shapes, M = 1 and 16, against bf16 cuBLAS and tinygemm int4. Every config the tuner
would try for the CUDA kernel (tune.candidates) plus the shipped table's entry is checked against
the reference and timed with bench.py's machinery (CUDA graphs, weights rotated past L2, medians);
the floor is bytes / measured copy bandwidth. A compact table on stdout, every timing in
$OUT/w4_variants.json, and the best v8 config at gate_up M=1 as ncu_w4_decode.py arguments in
$OUT/ncu_args.txt.

    python benchmarks/w4_variants.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbopack.inference.kernels import bench, tune  # noqa: E402
from turbopack.inference.kernels import table as kernel_table  # noqa: E402
from turbopack.inference.kernels.config import KernelConfig, KernelName  # noqa: E402

LAYOUT = "w4_t64x64"


def configs(n: int, k: int, m: int, sms: int) -> list[KernelConfig]:
    """The tuner's CUDA candidates, and the shipped sm90 entry if it is a CUDA one."""
    out = [c for c in tune.candidates("w4a16", n, k, m, sms) if c.kernel is KernelName.CUDA]
    shipped = kernel_table.lookup("sm90", LAYOUT, n, k, m)
    if shipped is not None and shipped.kernel is KernelName.CUDA and shipped not in out:
        out.append(shipped)
    return out


def measure(wt: bench.Weight, m: int, sms: int, l2: int, gen: torch.Generator) -> dict:
    n, k = wt.shape
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
    ref = bench.reference_out(wt, x)
    rows = []
    for cfg in configs(n, k, m, sms):
        try:
            err = bench.check(wt, cfg, x, ref)
            us = bench.time_ours(wt, cfg, x) if err < bench.TOL else math.nan
            rows.append({"cfg": cfg.to_json(), "variant": cfg.variant or 0, "err": err, "us": us})
        except Exception as e:  # reported in the table as a failure, the sweep goes on
            rows.append({"cfg": cfg.to_json(), "variant": cfg.variant or 0, "err": math.nan, "us": math.nan,
                         "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"})
    peers = {name: bench.time_us(fns) for name, fns in bench.peers(wt, x, l2).items()}
    shipped = kernel_table.lookup("sm90", LAYOUT, n, k, m)
    return {"shape": [n, k], "m": m, "bytes": wt.nbytes + 2 * m * (n + k), "rows": rows, "peers": peers,
            "shipped": shipped.to_json() if shipped is not None else None}


NEW = (1, 2, 3)


def best(res: dict, *variants: int) -> dict | None:
    ok = [r for r in res["rows"] if r["variant"] in variants and r["us"] == r["us"]]
    return min(ok, key=lambda r: r["us"]) if ok else None


def short(cfg: dict) -> str:
    return f"S{cfg.get('SPLIT_K', 0)}/R{cfg.get('STAGES', 4)}"


def fmt_row(name: str, res: dict, bw: float) -> str:
    floor = res["bytes"] / bw * 1e6
    cell = lambda r: f"{r['us']:6.1f} {100 * floor / r['us']:5.1f}% {short(r['cfg']):<7}" if r else f"{'-':>21}"  # noqa: E731
    shipped = next((r for r in res["rows"] if res["shipped"] and r["cfg"] == res["shipped"]), None)
    v5, new = best(res, 0), best(res, *NEW)
    p = res["peers"]
    ratio = f"{v5['us'] / new['us']:5.2f}x" if v5 and new else "    -"
    tg = f"{p['tinygemm'] / new['us']:5.2f}x" if new and "tinygemm" in p else "    -"
    return (f"{name:<8} {res['m']:>2} | {cell(shipped)} | {cell(v5)} | {cell(best(res, 2))} | {cell(best(res, 3))} | "
            f"{ratio} | {p.get('bf16', math.nan):6.1f} {p.get('tinygemm', math.nan):6.1f} | {tg}")


def bars(results: dict, bw: float) -> list[str]:
    out = []
    for name, by_m in results.items():
        r1, r16 = best(by_m[1], *NEW), best(by_m[16], *NEW)
        if r1:
            pct = 100 * by_m[1]["bytes"] / bw * 1e6 / r1["us"]
            tg = by_m[1]["peers"].get("tinygemm", math.nan) / r1["us"]
            out.append(f"{'PASS' if pct >= 85 else 'MISS'} {name} M=1 best new {pct:.1f}% of bandwidth (>= 85)")
            out.append(f"{'PASS' if tg >= 1.5 else 'MISS'} {name} M=1 best new {tg:.2f}x tinygemm (>= 1.5)")
        if r1 and r16:
            q = r16["us"] / r1["us"]
            out.append(f"{'PASS' if q <= 1.25 else 'MISS'} {name} best new M=16 / M=1 = {q:.2f} (<= 1.25)")
    return out


def save(out: Path, bw: float, results: dict) -> None:
    """The JSON of every timing, and ncu_w4_decode.py's arguments for the best v8 config at gate_up M=1."""
    (out / "w4_variants.json").write_text(json.dumps({"bw": bw, "results": results}, indent=1))
    g = best(results.get("gate_up", {}).get(1, {"rows": []}), 3)  # v8, the newest
    if g:
        (out / "ncu_args.txt").write_text(f"--split {g['cfg'].get('SPLIT_K', 0)} --stages {g['cfg']['STAGES']} "
                                          f"--variant {g['variant']}\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--shapes", default="gate_up,down,qkv,o")
    a = ap.parse_args()
    props = torch.cuda.get_device_properties(0)
    sms, l2 = props.multi_processor_count, props.L2_cache_size
    bw = max(bench.copy_bandwidth().values())
    gen = torch.Generator(device="cuda").manual_seed(0)
    print(f"{props.name}: copy bandwidth {bw / 1e12:.3f} TB/s; us, % of bandwidth, config S<split>/R<ring>")
    print(f"{'layer':<8} {'M':>2} | {'v5 shipped entry':<21} | {'v5 best':<21} | {'v7 best':<21} | "
          f"{'v8 best':<21} | v5/new | {'bf16':>6} {'tgemm':>6} | tg/new", flush=True)
    results: dict[str, dict[int, dict]] = {}
    for name in a.shapes.split(","):  # a row per shape as it is done: a run cut short keeps its rows
        wt = bench.make_weight("w4a16", bench.SHAPES[name], l2, gen)
        results[name] = {m: measure(wt, m, sms, l2, gen) for m in (1, 16)}
        del wt
        torch.cuda.empty_cache()
        for m in (1, 16):
            print(fmt_row(name, results[name][m], bw), flush=True)
        save(Path(a.out), bw, results)
    print("\n".join(bars(results, bw)))
    for name, by_m in results.items():
        for m, res in by_m.items():
            for r in res["rows"]:
                if not r["us"] == r["us"]:
                    print(f"REJECTED/FAILED {name} M={m} {r['cfg']}: err={r['err']:.2e} {r.get('error', '')}")


if __name__ == "__main__":
    main()
