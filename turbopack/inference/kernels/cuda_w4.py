"""The CUDA C++ W4A16 decode kernel (csrc/w4_decode.cu): built with nvcc on first use, loaded with
ctypes, launched on torch's current stream (CUDA-graph capturable).

No torch headers are involved (the .cu exports one C function taking raw pointers), so the build
is one nvcc call of a few seconds instead of a torch extension's minute, and CI compiles the same
file for sm_80 and sm_90a with its own nvcc. It serves bf16 activations, bf16 scales, group 128,
M <= 16; everything else stays on the Triton kernels (dispatch falls back).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

import torch

from turbopack.errors import TurbopackError
from turbopack.inference.kernels.epilogue import splitk_buffers

SRC = Path(__file__).with_name("csrc") / "w4_decode.cu"
GROUP = 128
M_MAX = 16
_LOCK = threading.Lock()
_LIBS: dict[str, ctypes.CDLL] = {}


def nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    cand = Path(home) / "bin" / "nvcc" if home else None
    return str(cand) if cand and cand.exists() else shutil.which("nvcc")


def gencode(capability: tuple[int, int]) -> str:
    arch = f"{capability[0]}{capability[1]}" + ("a" if capability == (9, 0) else "")
    return f"-gencode=arch=compute_{arch},code=sm_{arch}"


def build(capability: tuple[int, int], out_dir: Path | None = None) -> Path:
    """Compile the shared library for one arch (cached by source hash); returns its path."""
    compiler = nvcc()
    if compiler is None:
        raise TurbopackError("CUDA decode kernel: nvcc not found; set CUDA_HOME or use the Triton kernels")
    src = SRC.read_bytes()
    tag = hashlib.sha256(src + gencode(capability).encode()).hexdigest()[:16]
    out_dir = out_dir or Path(os.environ.get("TURBOPACK_CACHE", Path.home() / ".cache" / "turbopack")) / "kernels"
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"w4_decode_{tag}.so"
    if not lib.exists():
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cmd = [compiler, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", gencode(capability), str(SRC), "-o", str(tmp)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise TurbopackError(f"CUDA decode kernel: nvcc failed ({res.stderr.strip().splitlines()[-1:]}); use the Triton kernels")
        tmp.replace(lib)  # atomic: a concurrent builder never loads half a file
    return lib


def library(device: torch.device) -> ctypes.CDLL:
    cap = torch.cuda.get_device_capability(device)
    key = f"{cap[0]}{cap[1]}"
    with _LOCK:
        if key not in _LIBS:
            lib = ctypes.CDLL(str(build(cap)))
            fn = lib.turbopack_w4_decode
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_int] * 9 + [ctypes.c_void_p]
            _LIBS[key] = lib
    return _LIBS[key]


def supports(x2: torch.Tensor, fmt, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> bool:
    return (x2.is_cuda and x2.dtype == torch.bfloat16 and packed["scales"].dtype == torch.bfloat16
            and getattr(fmt, "group_size", 0) == GROUP and 1 <= x2.shape[0] <= M_MAX and shape[1] % GROUP == 0
            and x2.stride(0) % 8 == 0 and x2.stride(1) == 1 and x2.data_ptr() % 16 == 0 and torch.cuda.get_device_capability(x2.device) >= (8, 0)
            and nvcc() is not None)


def w4_decode(x2: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int], bias: torch.Tensor | None,
              split_k: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """y [M, N] (bf16) for M <= 16 tokens from a w4_t{16,64}x64 weight with group 128."""
    qw, s = packed["qweight"], packed["scales"]
    nt, kt, tn = qw.shape[0], qw.shape[1], qw.shape[2]
    n, k = shape
    m = x2.shape[0]
    y = out if out is not None else torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    split = max(1, min(int(split_k), k // GROUP))
    n_blocks = -(-nt * tn // 64)
    ws, cnt = splitk_buffers(x2.device, m, n, n_blocks, split)
    zeros = packed.get("zeros")  # uint8 [NT, K/G, TN] (asym); None: sym, z = 8
    ptr = lambda t: ctypes.c_void_p(t.data_ptr()) if t is not None else ctypes.c_void_p(0)  # noqa: E731
    rc = library(x2.device).turbopack_w4_decode(
        ptr(x2), ptr(qw), ptr(s), ptr(zeros), ptr(bias), ptr(y), ptr(ws), ptr(cnt),
        m, n, nt * tn, k, kt, s.shape[1], tn, x2.stride(0), split,
        ctypes.c_void_p(torch.cuda.current_stream(x2.device).cuda_stream))
    if rc != 0:
        raise RuntimeError(f"turbopack_w4_decode failed (code {rc})")
    return y
