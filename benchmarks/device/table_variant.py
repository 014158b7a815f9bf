#!/usr/bin/env python3
"""A copy of the shipped kernel table with some entries' keys changed, for build_ab.py --table.

Each edit is LAYOUT/NxK@M[,M...]:KEY=VALUE[/KEY=VALUE...] (LAYOUT may be left out: w4_t64x64);
the entry must exist in the shipped table (configs/sm90.json), and the result must parse as a
table (KernelTable.from_json: known kernels, keys their kernel reads, values of the right type):

    python3 benchmarks/device/table_variant.py .scratch/tables/glu8.json \\
        28672x4096@1,8:GLU_WARPS=8 4096x14336@1:SPLIT_K=16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from turbopack.errors import TurbopackError  # noqa: E402
from turbopack.inference.kernels.table import KernelTable  # noqa: E402

SHIPPED = ROOT / "turbopack" / "inference" / "kernels" / "configs" / "sm90.json"


def apply(table: dict, edit: str) -> None:
    where, sep, keys = edit.partition(":")
    layout, _, shape_m = where.rpartition("/")
    shape, _, ms = shape_m.partition("@")
    if not sep or not shape or not ms or not keys:
        raise SystemExit(f"error: edit {edit!r}: write [LAYOUT/]NxK@M[,M...]:KEY=VALUE[/KEY=VALUE...]")
    shapes = table["layouts"][layout or "w4_t64x64"]["shapes"]
    for m in ms.split(","):
        entry = shapes.get(shape, {}).get(m)
        if entry is None:
            raise SystemExit(f"error: edit {edit!r}: the shipped table has no entry {shape} at M = {m}")
        for kv in keys.split("/"):
            k, _, v = kv.partition("=")
            entry[k] = json.loads(v) if v[:1].isdigit() or v in ("true", "false") else v


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the table to write")
    ap.add_argument("edits", nargs="+", help="[LAYOUT/]NxK@M[,M...]:KEY=VALUE[/KEY=VALUE...]")
    args = ap.parse_args()
    table = json.loads(SHIPPED.read_text())
    for e in args.edits:
        apply(table, e)
    try:
        KernelTable.from_json(table, str(args.out))  # refuses what dispatch would refuse
    except TurbopackError as e:
        raise SystemExit(f"error: {e}") from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {args.out}: {len(args.edits)} edits over {SHIPPED.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
