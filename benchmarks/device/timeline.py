#!/usr/bin/env python3
"""Where the 8B decode step's time goes, kernel by kernel: the CUPTI timeline of one graph replay
(torch.profiler), and the step (ms) under table variants.

Under PDL a kernel starts before the one before it ends, and its own duration counts the time it
waits; what it costs the step is its increment: its end minus the previous kernel's end. For each
kernel's role (roles) the script prints launches, the sum and median of the increments, the median
duration and the median lead (its start minus the previous end: negative = launched early), and
one middle layer's kernels in order.

Variants (--variants, comma-separated) lay table keys over the shipped table's W4 entries of some
layers at every bucket <= 8 (variant_table): "qkv:SPLIT_K=16" puts q|k|v in 16 warps, whose 2
stages a warp all go out before pdl_wait (a ring of 4 issues 3); "gate_up:GLU_WARPS=8" runs
gate|up's GLU in 8 warps. A list may repeat itself (A,B,A,B): the step drifts within a process.

    python3 benchmarks/device/timeline.py --out $OUT [--variants shipped,qkv:SPLIT_K=16,shipped,qkv:SPLIT_K=16]
    SOME_ENV=1 python3 benchmarks/device/timeline.py --out $OUT --label some-env   # an A/B across processes

Writes $OUT/timeline_<label>_<variant>_b<batch>.json (the replay's kernels). A device diagnosis
beside bench_e2e.py, not a test.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from bench_e2e import build_8b  # noqa: E402
from e2e_context import graph_step_ms, time_graph  # noqa: E402

from turbopack.inference.generate import Engine  # noqa: E402
from turbopack.inference.kernels import table as kernel_table  # noqa: E402
from turbopack.inference.kernels.config import KernelConfig  # noqa: E402

#: the 8B layers a variant names, as the W4 table's "NxK"
LAYERS = {"qkv": "6144x4096", "o": "4096x4096", "gate_up": "28672x4096", "down": "4096x14336"}
REPLAYS = 5
ATTN = "_decode_kernel"  # the decode attention's Triton kernel (kernels/attention.py)
#: the other roles, by a part of their kernels' names
NAMED = {"attention": ATTN, "add_rmsnorm": "_add_rmsnorm", "lm_head": "nvjet", "act_mul": "act_mul"}


def variant_table(t: kernel_table.KernelTable, variant: str) -> kernel_table.KernelTable:
    """``t`` with table keys laid over the W4 entries (buckets <= 8: one token column) of the layers ``variant`` names:
    "shipped" (none), or parts joined by "+", each "<layer>:<KEY>=<int>[/<KEY>=<int>]", e.g.
    "qkv:SPLIT_K=16+o:SPLIT_K=16" or "gate_up:GLU_WARPS=8/SPLIT_K=16"."""
    if variant == "shipped":
        return t
    keys: dict[str, dict[str, int]] = {}
    for part in variant.split("+"):
        layer, _, kv = part.partition(":")
        keys[LAYERS[layer]] = {k: int(v) for k, v in (item.split("=") for item in kv.split("/"))}
    w4 = t.layouts["w4_t64x64"]
    shapes = {s: ({b: KernelConfig.from_json(c.to_json() | keys[s], variant) if b <= 8 and c.variant == 6 else c
                   for b, c in by.items()} if s in keys else by) for s, by in w4.shapes.items()}
    return replace(t, layouts={**t.layouts, "w4_t64x64": kernel_table.LayoutTable(w4.default, shapes)})


def replay_kernels(replay) -> list[dict]:
    """The kernels of the last of REPLAYS graph replays: name, start and end (µs)."""
    from torch.profiler import ProfilerActivity, profile

    time_graph(replay, iters=5)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(REPLAYS):
            replay()
        torch.cuda.synchronize()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.loads(Path(f.name).read_text())["traceEvents"]
    ks = sorted((e for e in events if e.get("cat") == "kernel"), key=lambda e: e["ts"])
    per = len(ks) // REPLAYS
    return [{"name": e["name"], "start": e["ts"], "end": e["ts"] + e["dur"]} for e in ks[-per:]]


def roles(ks: list[dict]) -> list[str]:
    """Each kernel's role in a Llama-style step: the rows kernels by their place (before the
    attention: q|k|v; after it: o; a GLU build: gate|up; else down), the glue and lm_head by name."""
    out = []
    for i, k in enumerate(ks):
        name, nxt, prv = k["name"], ks[i + 1]["name"] if i + 1 < len(ks) else "", ks[i - 1]["name"] if i else ""
        targs = re.search(r"kernel<([^>]*)>", name)
        if "_rows" in name and targs:
            glu = targs.group(1).split(",")[-1].strip() == "true"
            out.append("gate_up" if glu else "qkv" if ATTN in nxt else "o" if ATTN in prv else "down")
        else:
            out.append(next((role for role, key in NAMED.items() if key in name), name.split("<")[0][-40:]))
    return out


def summarize(ks: list[dict]) -> tuple[dict, list[dict]]:
    """(per kind: launches, sum of increments, median duration and lead; the kernels with theirs)."""
    rows = []
    for i, (k, role) in enumerate(zip(ks, roles(ks))):
        prev_end = ks[i - 1]["end"] if i else k["start"]
        rows.append({**k, "kind": role, "dur": k["end"] - k["start"],
                     "lead": k["start"] - prev_end, "inc": k["end"] - prev_end})
    kinds: dict[str, dict] = {}
    for r in rows:
        kinds.setdefault(r["kind"], {"n": 0, "inc": 0.0, "incs": [], "durs": [], "leads": []})
        d = kinds[r["kind"]]
        d["n"] += 1
        d["inc"] += r["inc"]
        d["incs"].append(r["inc"])
        d["durs"].append(r["dur"])
        d["leads"].append(r["lead"])
    return kinds, rows


def report(label: str, ks: list[dict]) -> None:
    kinds, rows = summarize(ks)
    total = ks[-1]["end"] - ks[0]["start"]
    print(f"--- {label}: {len(ks)} kernels, first start to last end {total:.1f} µs")
    print(f"  {'kind':40s} {'n':>4s} {'sum inc':>9s} {'med inc':>8s} {'med dur':>8s} {'med lead':>9s}")
    for kind, d in sorted(kinds.items(), key=lambda kv: -kv[1]["inc"]):
        print(f"  {kind:40s} {d['n']:4d} {d['inc']:9.1f} {statistics.median(d['incs']):8.2f} "
              f"{statistics.median(d['durs']):8.2f} {statistics.median(d['leads']):9.2f}")
    mid = len(rows) // 2
    print("  a middle stretch, in order (dur, lead, inc µs):")
    for r in rows[mid:mid + 10]:
        print(f"    {r['kind']:40s} {r['dur']:7.2f} {r['lead']:7.2f} {r['inc']:7.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--format", default="w4a16")
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--variants", default="shipped")
    ap.add_argument("--timeline", default="shipped", help="variants whose timeline is taken (all: every one)")
    ap.add_argument("--label", default="default", help="names this process's setting (e.g. an env A/B)")
    args = ap.parse_args()
    model = build_8b(args.format, args.layers, args.shape)
    load, shipped = kernel_table.load_table, kernel_table.load_table("sm90")
    out: dict[str, float] = {}
    traced: set[tuple[str, int]] = set()  # (variant, batch) whose timeline is taken
    variants = args.variants.split(",")
    try:
        for v in variants + [variants[0]]:  # the first again: the drift (a list may repeat itself: A,B,A,B)
            t = variant_table(shipped, v)
            kernel_table.load_table = lambda arch, t=t: t  # dispatch reads the module's attribute per call
            for b in map(int, args.batches.split(",")):
                key = f"{args.label} / {v} / batch {b}"
                key += f" #{sum(k.startswith(key) for k in out) + 1}" if key in out else ""  # a variant timed again
                out[key] = ms = graph_step_ms(model, args.prompt, b)
                print(f"{key:50s} {ms:.4f} ms", flush=True)
                if (args.timeline == "all" or v in args.timeline.split(",")) and (v, b) not in traced:
                    traced.add((v, b))
                    eng = Engine(model, kv="bf16")
                    eng.generate(torch.randint(0, 1000, (b, args.prompt)), 8)
                    ks = replay_kernels(eng._graph.graph.replay)
                    del eng
                    model.kv_caches = None
                    report(f"{args.label} / {v} / batch {b}", ks)
                    name = "".join(ch if ch.isalnum() else "_" for ch in v)
                    Path(args.out, f"timeline_{args.label}_{name}_b{b}.json").write_text(json.dumps(ks))
    finally:
        kernel_table.load_table = load
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
