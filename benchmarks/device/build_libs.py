#!/usr/bin/env python3
"""Build the CUDA C++ kernel libraries in parallel (each is one nvcc process, ~25-200 s on the device),
so a device script's later steps find them in the cache.

    python3 benchmarks/device/build_libs.py                    # all of them
    python3 benchmarks/device/build_libs.py cuda_w4 cuda_w4mm  # some
    python3 benchmarks/device/build_libs.py --offline .scratch/prebuilt 9.0   # here, no GPU: for sm_90a
    python3 benchmarks/device/build_libs.py --seed .scratch/prebuilt.tar.xz   # there, before building

Device time is scarce and nvcc is the same 13.0 on both machines, so the libraries can be compiled
on the CPU machine (--offline, named by source and target but not compiler path), carried to the
device, and copied into its cache under the device compiler's key (--seed): a call saves the build.
--offline also writes the folder as one xz archive beside it (<folder>.tar.xz, ~17x smaller: the
libraries are mostly machine code), and --seed takes either. A call carries 64 MiB with the tree,
which run 12's 55 MB of knockout builds (knockout.py, which writes its archive the same way) overran.
"""

from __future__ import annotations

import ctypes
import importlib
import shutil
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from turbopack.inference.kernels import cuda_build  # noqa: E402

#: the "compiler" in the key of an offline build's file name
OFFLINE = "offline"

#: the kernel modules with a library(device) of their own
ALL = ("cuda_w4", "cuda_w4mm", "cuda_w4wg", "cuda_w4ws", "cuda_i8ws", "cuda_moe", "cuda_fp4", "cuda_w8")


def modules(names: list[str]):
    return [importlib.import_module(f"turbopack.inference.kernels.{n}") for n in names or ALL]


def archive(folder: Path) -> Path:
    """``folder``'s files as ``<folder>.tar.xz`` beside it (replaced); its path."""
    dest = folder.with_name(folder.name + ".tar.xz")
    tmp = dest.with_suffix(".tmp")
    with tarfile.open(tmp, "w:xz") as tar:
        for f in sorted(folder.iterdir()):
            tar.add(f, arcname=f.name)
    tmp.replace(dest)
    print(f"{dest}: {dest.stat().st_size / 2**20:.1f} MiB", flush=True)
    return dest


def unpacked(path: Path) -> Path:
    """A folder of libraries: ``path`` itself, or an archive() of one extracted to a new temporary folder."""
    if path.is_dir() or not path.name.endswith(".tar.xz"):
        return path
    out = Path(tempfile.mkdtemp(prefix=path.name.removesuffix(".tar.xz") + "-"))
    with tarfile.open(path, "r:xz") as tar:
        tar.extractall(out, filter="data")
    return out


def offline(out: Path, capability: tuple[int, int], names: list[str]) -> int:
    """Compile here (no GPU needed) into ``out``, keyed without the compiler's path."""
    out.mkdir(parents=True, exist_ok=True)

    def one(m):
        dest = cuda_build.lib_path(m.SRC, capability, OFFLINE, out)
        if not dest.exists():
            with tempfile.TemporaryDirectory() as tmp:
                shutil.move(cuda_build.build(m.SRC, capability, Path(tmp)), dest)
        print(f"{dest.name}: {dest.stat().st_size / 2**20:.1f} MiB", flush=True)

    with ThreadPoolExecutor(2) as ex:
        list(ex.map(one, modules(names)))
    archive(out)
    return 0


def diagnostic(folder: Path, capability: tuple[int, int], builds: list[tuple[Path, Path, tuple[str, ...]]],
               jobs: int) -> None:
    """Diagnostic builds (knockout.py, build_ab.py) here, in parallel: each (source, library file,
    nvcc -D defines) not yet in ``folder``; then the folder's archive, which a call carries."""
    import subprocess

    compiler = cuda_build.nvcc()
    if compiler is None:
        raise SystemExit("error: nvcc not found")
    folder.mkdir(parents=True, exist_ok=True)

    def one(build):
        src, lib, defines = build
        cmd = cuda_build.nvcc_command(compiler, src, capability, lib, defines)
        res = subprocess.run(cmd, capture_output=True, text=True)
        print(f"built {lib.name} ({src.name} {' '.join(defines)}): rc {res.returncode}", file=sys.stderr, flush=True)
        if res.returncode != 0:
            raise SystemExit(res.stderr[-2000:])

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, [b for b in builds if not b[1].exists()]))
    archive(folder)


def seed(src_dir: Path, names: list[str]) -> None:
    """Copy libraries built offline for this device's arch (a folder or its archive) into the cache
    where ``library`` looks."""
    src_dir = unpacked(src_dir)
    cap = torch.cuda.get_device_capability()
    for m in modules(names):
        have = cuda_build.lib_path(m.SRC, cap, OFFLINE, src_dir)
        dest = cuda_build.lib_path(m.SRC, cap, cuda_build.nvcc() or "", None)
        if have.exists() and not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(have, dest)
            try:  # this machine's libc/libstdc++ must take it; else it is built here as before
                ctypes.CDLL(str(dest))
                print(f"seeded {dest.name} from {have}", flush=True)
            except OSError as e:
                dest.unlink()
                print(f"not seeded from {have}: {e}", flush=True)


def main(names: list[str]) -> int:
    if names[:1] == ["--offline"]:
        major, minor = names[2].split(".")
        return offline(Path(names[1]), (int(major), int(minor)), names[3:])
    if names[:1] == ["--seed"]:
        seed(Path(names[1]), names[2:])
        names = names[2:]
    unknown = [n for n in names if n not in ALL]
    if unknown:
        print(f"unknown library module(s) {unknown}; known: {', '.join(ALL)}", file=sys.stderr)
        return 2
    mods = modules(names)
    dev = torch.device("cuda")
    t = time.time()
    with ThreadPoolExecutor(len(mods)) as ex:
        list(ex.map(lambda m: m.library(dev), mods))
    print(f"built {', '.join(m.SRC.name for m in mods)} in {time.time() - t:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
