"""nvcc at first use for the CUDA C++ kernels (csrc/*.cu): one shared library per source and arch,
cached on disk across processes, loaded with ctypes.

No torch headers are involved (each .cu exports C functions taking raw pointers), so a build is one
nvcc call of a few seconds instead of a torch extension's minute, and CI compiles the same files
for sm_80, sm_90a, sm_100a and sm_120a with its own nvcc (mma.sync and cp.async code, which every
arch from sm80 runs; on sm100/sm120 compiled, not yet run). The cache key covers the source, the
csrc headers it includes (transitively), the target and the compiler: an edit to one kernel's header
rebuilds the libraries that include it and no others.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import torch

from turbopack.errors import TurbopackError
from turbopack.inference.config import Activation
from turbopack.inference.kernels import pdl
from turbopack.layouts.archs import ARCHS

CSRC = Path(__file__).with_name("csrc")
#: the decode kernels' GLU activations by the model's (csrc/common.cuh act_mul: kActSilu, kActGeluTanh)
ACT_CODE = {Activation.SILU: 1, Activation.GELU_TANH: 2}
#: a local include: ``#include "name.cuh"`` (system headers use <>, and are the compiler's)
_INCLUDE = re.compile(rb'^\s*#\s*include\s+"([^"]+)"', re.M)
_LOCK = threading.Lock()
_LIBS: dict[tuple[str, str], tuple[ctypes.CDLL, torch.device]] = {}


#: the most CTAs in one thread-block cluster (H100/H200: 16; past 8 non-portable, which the
#: launchers allow per kernel: csrc/common.cuh allow_cluster)
CLUSTER_MAX = 16
#: the shared memory one CTA may take on sm90 (227 KB; csrc/tma.cuh kSmemMax): the warp-specialized
#: kernels' rings are as deep as it holds
SM90_SMEM_MAX = 227 * 1024


def clusters(device: torch.device) -> bool:
    """Thread-block clusters (and distributed shared memory): sm_90 and later."""
    return torch.cuda.get_device_capability(device) >= (9, 0)


def nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    cand = Path(home) / "bin" / "nvcc" if home else None
    return str(cand) if cand and cand.exists() else shutil.which("nvcc")


def gencode(capability: tuple[int, int]) -> str:
    """nvcc's target for a device: the registered arch's own ("90a", "100a", "120a"), else the
    plain capability (an sm87 or sm103 part gets code for exactly itself)."""
    exact = [ARCHS.get(a) for a in ARCHS if ARCHS.get(a).capability == tuple(capability)]
    arch = exact[0].nvcc_target if exact and exact[0].nvcc_target else f"{capability[0]}{capability[1]}"
    return f"-gencode=arch=compute_{arch},code=sm_{arch}"


def cache_dir() -> Path:
    return Path(os.environ.get("TURBOPACK_CACHE", Path.home() / ".cache" / "turbopack")) / "kernels"


def headers(src: Path) -> list[str]:
    """The csrc headers ``src`` includes, directly or through another, in first-seen order."""
    seen: list[str] = []
    todo = [src]
    while todo:
        for name in _INCLUDE.findall(todo.pop(0).read_bytes()):
            name = name.decode()
            if name not in seen:
                if not (CSRC / name).is_file():
                    raise TurbopackError(f"CUDA kernels ({src.name}): includes {name!r}, which is not in {CSRC}")
                seen.append(name)
                todo.append(CSRC / name)
    return seen


def lib_path(src: Path, capability: tuple[int, int], compiler: str, out_dir: Path | None = None) -> Path:
    """Where ``build`` keeps ``src``'s library for one arch and compiler."""
    text = src.read_bytes() + b"".join((CSRC / h).read_bytes() for h in headers(src))
    tag = hashlib.sha256(text + gencode(capability).encode() + compiler.encode()).hexdigest()[:16]
    return (out_dir or cache_dir()) / f"{src.stem}_{tag}.so"


def nvcc_command(compiler: str, src: Path, capability: tuple[int, int], out: Path,
                 defines: tuple[str, ...] = ()) -> list[str]:
    """nvcc's command line for ``src``'s shared library for one arch (``defines``: -D NAME=VALUE,
    for diagnostic builds such as benchmarks/device/knockout.py's; the runtime's have none). Headers
    come from CSRC, as ``headers`` resolves them, also for a source outside it (benchmarks/device)."""
    return [compiler, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-I", str(CSRC),
            *(f"-D{d}" for d in defines), gencode(capability), str(src), "-o", str(out)]


def build(src: Path, capability: tuple[int, int], out_dir: Path | None = None) -> Path:
    """Compile ``src`` into a shared library for one arch (cached); its path."""
    compiler = nvcc()
    if compiler is None:
        raise TurbopackError(f"CUDA kernels ({src.name}): nvcc not found; set CUDA_HOME or use the Triton kernels")
    lib = lib_path(src, capability, compiler, out_dir)
    lib.parent.mkdir(parents=True, exist_ok=True)
    if not lib.exists():
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        res = subprocess.run(nvcc_command(compiler, src, capability, tmp), capture_output=True, text=True)
        if res.returncode != 0:
            raise TurbopackError(f"CUDA kernels ({src.name}): nvcc failed ({res.stderr.strip().splitlines()[-1:]}); "
                                 f"use the Triton kernels")
        tmp.replace(lib)  # atomic: a concurrent builder never loads half a file
    return lib


def open_library(path: Path, device: torch.device, signatures: dict[str, list]) -> ctypes.CDLL:
    """A built library loaded, each function in ``signatures`` ({name: argtypes}) declared to
    return a C int, its PDL switch set for ``device`` (uncached: ``library`` is the runtime's way in)."""
    lib = ctypes.CDLL(str(path))
    for name, argtypes in signatures.items():
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int
        fn.argtypes = argtypes
    lib.turbopack_set_pdl.argtypes, lib.turbopack_set_pdl.restype = [ctypes.c_int], None
    lib.turbopack_set_pdl(int(pdl.enabled(device)))
    return lib


def library(src: Path, device: torch.device, signatures: dict[str, list]) -> ctypes.CDLL:
    """The loaded library of ``src`` for ``device``'s arch (built at first use, cached)."""
    cap = torch.cuda.get_device_capability(device)
    key = (src.name, f"{cap[0]}{cap[1]}")
    with _LOCK:
        if key not in _LIBS:
            _LIBS[key] = (open_library(build(src, cap), device, signatures), device)
    return _LIBS[key][0]


def refresh_pdl() -> None:
    """Re-read pdl.enabled (``TURBOPACK_PDL``) into every loaded library: launches (and graphs
    captured) from now on follow it."""
    with _LOCK:
        for lib, device in _LIBS.values():
            lib.turbopack_set_pdl(int(pdl.enabled(device)))


def ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


def stream(device: torch.device) -> ctypes.c_void_p:
    return ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream)


def usable(x2: torch.Tensor) -> bool:
    """Can a CUDA C++ kernel take activations x2 at all (a CUDA sm80+ device, nvcc present)?"""
    return (x2.is_cuda and x2.dtype in (torch.bfloat16, torch.float16)
            and torch.cuda.get_device_capability(x2.device) >= (8, 0) and nvcc() is not None)
