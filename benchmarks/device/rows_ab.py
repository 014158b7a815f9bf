"""The decode by rows (VARIANT 4: W4A16's csrc/w4_rows.cuh; W8A16's, FP8's and W8A8's w8_rows_kernel
in csrc/w8.cu) against the shipped table's config, per layer and token count, on one GPU.

Each candidate is checked against the float64 contract on fresh inputs (bench.TOL) and timed as
bench_linear times (CUDA graph, weights rotated past L2, median; PDL off). Prints one row per
(layer, M): the table's config, the best rows config, every rows config's time, the floor share;
with --write-table it also writes $OUT/sm90.json: the shipped table (or --table) with the rows
config at bucket M wherever rows won, so bench_e2e can A/B the step (copy it over
configs/sm90.json on the device).

    python3 benchmarks/device/rows_ab.py --model llama3-8b --ms 1,2,4,8 --write-table
    python3 benchmarks/device/rows_ab.py --format w8a16 --ms 1,4,8 --write-table
    python3 benchmarks/device/rows_ab.py --format w8a8 --ms 1,8,16    # i8_rowmajor, x kept 16-bit
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

from turbopack.inference.kernels import bench, cuda_build, cuda_w4, cuda_w8, pdl, tune  # noqa: E402
from turbopack.inference.kernels.bench_main import measure  # noqa: E402
from turbopack.inference.kernels.config import KernelConfig  # noqa: E402
from turbopack.inference.kernels.dispatch import resolve_config  # noqa: E402

#: the bench.SETUPS names with a decode by rows (tune.rows_candidates: its configs per M)
FORMATS = ("w4a16", *tune.W8_SETUPS)
#: the rows variants beside the plain one, as the table's last column names them, per kernel family
#: (W4's rows of 64 and rows with x per stage, the 8-bit kernel's 128-k slots)
TAGS = {"w4": {cuda_w4.ROWS64: "r64 ", cuda_w4.ROWS_X: "rx "}, "w8": {cuda_w8.ROWS_WIDE: "wide "}}


def table_with_rows(wins: dict[tuple[str, int], KernelConfig], dims: dict[str, tuple[int, int]], layout: str) -> dict:
    """The shipped sm90.json with bucket M of each (layer, M) that rows won set to its rows config."""
    src = Path(cuda_w4.__file__).parent / "configs" / "sm90.json"
    d = json.loads(src.read_text())
    shapes = d["layouts"].setdefault(layout, {}).setdefault("shapes", {})  # i8_rowmajor: no entry yet
    for (name, m), cfg in wins.items():
        n, k = dims[name]
        entry = shapes.setdefault(f"{n}x{k}", {})
        entry[str(m)] = cfg.to_json()
        shapes[f"{n}x{k}"] = dict(sorted(entry.items(), key=lambda kv: int(kv[0])))
    return d


def scaling(best: dict[tuple[str, int], float]) -> None:
    """Each layer's best time at its largest M over its best at M = 1 (issue 11's bar for W4 at M = 16:
    <= 1.25x), the table's config or a rows one, whichever won."""
    for name in dict.fromkeys(n for n, _ in best):
        ms = sorted(m for n, m in best if n == name)
        if ms[0] == 1 and ms[-1] > 1:
            print(f"{name}: M={ms[-1]} / M=1 = {best[(name, ms[-1])] / best[(name, 1)]:.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama3-8b", choices=list(bench.MODELS))
    ap.add_argument("--format", default="w4a16", choices=FORMATS)
    ap.add_argument("--ms", default="1,2,4,8")
    ap.add_argument("--write-table", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    os.environ.setdefault(pdl.ENV, "0")
    cuda_build.refresh_pdl()
    props = torch.cuda.get_device_properties(0)
    l2 = props.L2_cache_size
    bw = max(bench.copy_bandwidth().values())
    print(f"{props.name}; copy bandwidth {bw / 1e12:.2f} TB/s")
    gen = torch.Generator(device="cuda").manual_seed(int.from_bytes(os.urandom(4), "little"))
    dims = bench.MODELS[args.model]
    wins: dict[tuple[str, int], KernelConfig] = {}
    best: dict[tuple[str, int], float] = {}
    print("| layer | M | table cfg | table µs | best rows | rows µs | speedup | rows % floor | every rows (w/st: µs) |")
    print("|---|---:|---|---:|---|---:|---:|---:|---|")
    for name, (n, k) in dims.items():
        wt = bench.make_weight(args.format, (n, k), l2, gen)
        for m in map(int, args.ms.split(",")):
            base = resolve_config(wt.layout_name, wt.fmt, n, k, m, torch.device("cuda"))
            r_base = measure(args.format, wt, m, [base], l2, False, gen)
            r_rows = measure(args.format, wt, m, tune.rows_candidates(args.format, m, k), l2, False, gen)
            if "error" in r_base or "error" in r_rows:
                print(f"| {name} | {m} | {r_base.get('error', '')} | | {r_rows.get('error', '')} | | | | |")
                continue
            floor = (wt.nbytes + 2 * m * (n + k)) / bw * 1e6
            tags = TAGS["w4" if args.format == "w4a16" else "w8"]
            every = " ".join(f"{tags.get(c.get('VARIANT'), '')}{c['SPLIT_K']}/{c['STAGES']}: {t:.1f}"
                             for t, c in r_rows["tried"])
            print(f"| {name} | {m} | {base.describe()} | {r_base['us']:.2f} | {r_rows['cfg'].describe()} | "
                  f"{r_rows['us']:.2f} | {r_base['us'] / r_rows['us']:.2f}x | {100 * floor / r_rows['us']:.0f}% | "
                  f"{every} |", flush=True)
            best[(name, m)] = min(r_rows["us"], r_base["us"])
            if r_rows["us"] < r_base["us"]:
                wins[(name, m)] = r_rows["cfg"]
        del wt
        torch.cuda.empty_cache()
    scaling(best)
    if args.write_table:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        table = table_with_rows(wins, dims, bench.SETUPS[args.format][0])
        (Path(args.out) / "sm90.json").write_text(json.dumps(table, indent=1))
        print(f"rows won: {', '.join(f'{n} M={m}' for n, m in wins) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
