"""Peak RSS and throughput of `turbopack quantize` on a synthetic checkpoint with 1 GiB tensors.

    python benchmarks/quantize_scale.py --dir /tmp/tp-scale [--format w4a16]

Writes a 2-layer Llama-shaped checkpoint with hidden 16384 and intermediate 32768 (gate/up/down
are 1 GiB each in bf16), then runs the quantize CLI in a child process and reports its peak RSS
(getrusage of the child) and MB/s. Bar (issue 2): peak RSS < 3 GiB.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from turbopack.packer.synthetic import llama_config, write_synthetic


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/tp-scale")
    ap.add_argument("--format", default="w4a16")
    ap.add_argument("--layers", type=int, default=2)
    a = ap.parse_args()
    root = Path(a.dir)
    root.mkdir(parents=True, exist_ok=True)
    src, out = root / "synthetic", root / f"q-{a.format}"
    if not src.exists():
        t = time.perf_counter()
        write_synthetic(src, llama_config(16384, 32768, a.layers, 128, 8, vocab=8192))
        print(f"wrote {src} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "turbopack.cli.app", "quantize", str(src), "-o", str(out),
                    "--format", a.format, "--json"], check=True)
    wall = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    size = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    print(f"format={a.format} input={size / 2**30:.2f} GiB wall={wall:.1f} s "
          f"throughput={size / 1e6 / wall:.0f} MB/s peak_rss_child={rss:.0f} MiB")


if __name__ == "__main__":
    main()
