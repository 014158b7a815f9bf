#!/usr/bin/env python3
"""Where a kernel's warps stall, instruction by instruction: ncu's source page (SASS, with the
warp-state sampling of the SourceCounters/WarpStateStats collection) of a report, summed.

    ncu -o rep --section SourceCounters --section WarpStateStats ... python3 ...   # the device
    python3 benchmarks/device/ncu_source.py rep.ncu-rep --top 40 > rep_source.txt

Prints the page's columns (so a later reader knows what the export held), then the instructions
holding the most stall samples with their share of the kernel's and their leading reasons, and the
samples summed by opcode. Then where the instructions go (the page's "Instructions Executed"):
summed by opcode, and by how often a line ran (one count for a kernel's straight-line code, its
multiples for loop bodies; run 28 found 37% of the one-launch MoE's instructions in lines every
warp ran once). The raw page goes to REP.source.csv beside the report.
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
from collections import Counter
from pathlib import Path

SAMPLES = ("Warp Stall Sampling (All Samples)", "Warp Stall Sampling (All Warps)")


def page(report: Path) -> str:
    """The report's SASS source page as CSV text (ncu's CLI)."""
    for flag in (["--print-source", "sass"], ["--print-source=sass"]):
        res = subprocess.run(["ncu", "-i", str(report), "--page", "source", "--csv", *flag],
                             capture_output=True, text=True)
        if res.returncode == 0 and res.stdout.strip():
            return res.stdout
    raise SystemExit(f"error: ncu could not print {report}'s source page: {res.stderr.strip()[-400:]}")


def number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def opcode(source: str) -> str:
    """A SASS line's opcode without its predicate and modifiers ("@!P0 LDG.E.128 ..." -> "LDG")."""
    words = [t for t in source.strip().split(" ") if t and not t.startswith("@")]
    return words[0].split(".")[0] if words else "?"


def instruction_counts(rows: list[dict], top: int = 8) -> None:
    """Executed warp instructions by opcode, and by the count a line ran (its trip count times the
    warps that reached it): the groups holding the most instructions, with their leading opcodes."""
    col = "Instructions Executed"
    if not rows or col not in rows[0]:
        print(f"(no {col!r} column: collect SourceCounters)")
        return
    total = sum(number(r[col]) for r in rows) or 1.0
    by_op: Counter = Counter()
    by_count: dict[float, Counter] = {}
    for r in rows:
        n, op = number(r[col]), opcode(r.get("Source", ""))
        by_op[op] += n
        by_count.setdefault(n, Counter())[op] += 1
    print(f"{total:.0f} warp instructions executed; by opcode: "
          + ", ".join(f"{op} {n / total:.1%}" for op, n in by_op.most_common(12)))
    groups = sorted(((n * sum(c.values()), n, c) for n, c in by_count.items() if n), reverse=True)[:top]
    for held, n, ops in groups:
        lead = ", ".join(f"{op} {k}" for op, k in ops.most_common(5))
        print(f"  lines run {n:.0f} times: {sum(ops.values())} lines, {held / total:.1%} of the instructions ({lead})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    text = page(args.report)
    args.report.with_suffix(".source.csv").write_text(text)
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if "Source" in ln and "," in ln), 0)
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[start:]))))
    if not rows:
        raise SystemExit("error: the source page has no rows")
    cols = list(rows[0])
    print("columns:", " | ".join(cols))
    key = next((c for c in cols if c in SAMPLES), None) or next((c for c in cols if "Sampling" in c), None)
    if key is None:
        raise SystemExit("error: no warp-sampling column in the source page (collect SourceCounters)")
    reasons = [c for c in cols if c != key and ("stall" in c.lower() or "Sampling" in c)]
    total = sum(number(r[key]) for r in rows) or 1.0
    print(f"{len(rows)} SASS lines, {total:.0f} samples ({key})")
    by_op: Counter = Counter()
    for r in rows:
        by_op[opcode(r.get("Source", ""))] += number(r[key])
    print("by opcode: " + ", ".join(f"{op} {n / total:.1%}" for op, n in by_op.most_common(12)))
    for r in sorted(rows, key=lambda r: -number(r[key]))[:args.top]:
        lead = sorted(((number(r[c]), c) for c in reasons), reverse=True)[:3]
        why = ", ".join(f"{c} {n:.0f}" for n, c in lead if n > 0)
        addr = r.get("Address", r.get("# Address", ""))
        print(f"{number(r[key]) / total:6.1%}  {addr:>8s}  {r.get('Source', '')[:70]:70s}  {why}")
    instruction_counts(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
