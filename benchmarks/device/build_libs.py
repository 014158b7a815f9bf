#!/usr/bin/env python3
"""Build the CUDA C++ kernel libraries in parallel (each is one nvcc process, ~25-60 s on the device),
so a device script's later steps find them in the cache.

    python3 benchmarks/device/build_libs.py                    # all of them
    python3 benchmarks/device/build_libs.py cuda_w4 cuda_w4mm  # some
"""

from __future__ import annotations

import importlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

#: the kernel modules with a library(device) of their own
ALL = ("cuda_w4", "cuda_w4mm", "cuda_w4wg", "cuda_moe", "cuda_fp4", "cuda_w8")


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in ALL]
    if unknown:
        print(f"unknown library module(s) {unknown}; known: {', '.join(ALL)}", file=sys.stderr)
        return 2
    mods = [importlib.import_module(f"turbopack.inference.kernels.{n}") for n in names or ALL]
    dev = torch.device("cuda")
    t = time.time()
    with ThreadPoolExecutor(len(mods)) as ex:
        list(ex.map(lambda m: m.library(dev), mods))
    print(f"built {', '.join(m.SRC.name for m in mods)} in {time.time() - t:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
