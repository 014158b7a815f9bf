"""Peak RSS and throughput of quantize, pack and quantize+pack on a synthetic checkpoint, per stage.

    python benchmarks/quantize_scale.py --dir /tmp/tp-scale                       # 70B-shaped, 4 of 80 layers
    python benchmarks/quantize_scale.py --dir /tmp/tp-scale --shape wide --layers 2

``--shape 70b``: Llama-3-70B's layer shapes (hidden 8192, intermediate 28672, 64 heads, 8 KV heads,
vocab 128256), ``--layers`` of its 80 layers plus the full embeddings and lm_head (2.1 GB each, the
largest tensors). ``--shape wide``: hidden 16384, intermediate 32768, vocab 8192 (gate/up/down are
1 GiB tensors each). Each stage runs the CLI in a child process under ``/usr/bin/time``-like
accounting (wall, peak RSS of that child alone); throughput is bf16 input bytes per second, and the
per-layer cost of the 70B shape extrapolates to all 80 layers. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from turbopack.packer.synthetic import llama_config, write_synthetic

SHAPES = {
    "70b": dict(hidden=8192, intermediate=28672, heads=64, kv_heads=8, vocab=128256, full_layers=80),
    "wide": dict(hidden=16384, intermediate=32768, heads=128, kv_heads=8, vocab=8192, full_layers=None),
}


def child(args: list[str]) -> tuple[float, float]:
    """(wall s, peak RSS GiB) of one CLI run in its own process."""
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child execs the CLI: its rusage is its own, not the sum of earlier stages
        os.execv(sys.executable, [sys.executable, "-m", "turbopack.cli.app", *args])
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"turbopack {' '.join(args)} failed")
    return time.perf_counter() - t, usage.ru_maxrss / 2**20


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/tp-scale"))
    ap.add_argument("--shape", choices=sorted(SHAPES), default="70b")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--format", default="w4a16")
    a = ap.parse_args()
    s = SHAPES[a.shape]
    a.dir.mkdir(parents=True, exist_ok=True)
    src = a.dir / f"synthetic-{a.shape}-{a.layers}"
    if not src.exists():
        t = time.perf_counter()
        write_synthetic(
            src, llama_config(s["hidden"], s["intermediate"], a.layers, s["heads"], s["kv_heads"], vocab=s["vocab"])
        )
        print(f"wrote {src} ({size_of(src) / 1e9:.2f} GB) in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    q, p, qp = a.dir / "q", a.dir / "p", a.dir / "qp"
    for d in (q, p, qp):
        shutil.rmtree(d, ignore_errors=True)
    n_in = size_of(src)
    stages = [
        ("quantize", ["quantize", str(src), "-o", str(q), "--format", a.format], n_in),
        ("pack (quantized -> sm90)", ["pack", str(q), "-o", str(p), "--arch", "sm90"], None),
        ("quantize+pack (one pass)", ["pack", str(src), "-o", str(qp), "--format", a.format, "--arch", "sm90"], n_in),
    ]
    print("| stage | input | wall s | MB/s of bf16 input | peak RSS GiB |\n|---|---:|---:|---:|---:|")
    for name, args, nbytes in stages:
        wall, rss = child(args)
        nbytes = nbytes or size_of(q)
        unit = "bf16" if nbytes == n_in else "quantized"
        print(
            f"| {name} | {nbytes / 1e9:.2f} GB {unit} | {wall:.1f} | {nbytes / 1e6 / wall:.0f} | {rss:.2f} |",
            flush=True,
        )
        if name.startswith("quantize+pack") and s["full_layers"]:
            # streaming cost is per byte (every tensor goes through the same chunked path), so the
            # whole model takes its bytes at the measured rate; memory does not grow with layers
            full = n_in + (s["full_layers"] - a.layers) * layer_bytes(s)
            print(f"\nextrapolated to all {s['full_layers']} layers ({full / 1e9:.0f} GB bf16): "
                  f"~{full / (nbytes / wall) / 60:.0f} min at {nbytes / 1e6 / wall:.0f} MB/s")


def layer_bytes(s: dict) -> int:
    h, i, hd = s["hidden"], s["intermediate"], s["hidden"] // s["heads"]
    return 2 * (h * (2 * h + 2 * s["kv_heads"] * hd) + 3 * h * i + 2 * h)


if __name__ == "__main__":
    main()
