"""The CUDA C++ W4A16 kernels (csrc/w4.cu): built with nvcc on first use, cached on disk across
processes, loaded with ctypes, launched on torch's current stream (CUDA-graph capturable).

No torch headers are involved (the .cu exports C functions taking raw pointers), so the build is
one nvcc call of a few seconds instead of a torch extension's minute, and CI compiles the same
file for sm_80, sm_90a, sm_100a and sm_120a with its own nvcc (the kernels are mma.sync and
cp.async code, which every arch from sm80 runs; on sm100/sm120 they are compiled, not yet run).
Two kernels:

  decode   M <= 16 tokens: tensor-core GEMV with a cp.async ring (config keys SPLIT_K, STAGES)
  dq_mm    any M: the packed codes dequantized into a scratch 16-bit W (one coalesced pass, the
           contract's weights bit for bit), then one cuBLAS GEMM; wins where the GEMM's time
           dwarfs the extra pass (prefill; the tuned table says from which M)

Both read bf16 or fp16 activations with scales of the same dtype; decode needs group 64 or 128,
dq_mm any group. Everything else stays on the Triton kernels (dispatch falls back).
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import shutil
import subprocess
import threading
from pathlib import Path

import torch

from turbopack.errors import TurbopackError
from turbopack.inference.kernels.epilogue import splitk_buffers
from turbopack.layouts.archs import ARCHS

SRC = Path(__file__).with_name("csrc") / "w4.cu"
DECODE_GROUPS = (64, 128)
DEQUANT_GROUPS = (32, 64, 128)
M_MAX = 16
STAGES = (2, 3, 4, 6, 8)  # ring depths the decode kernel is built for (csrc/w4.cu)
DEFAULT_STAGES = 4
_DTYPE_CODE = {torch.bfloat16: 0, torch.float16: 1}
_LOCK = threading.Lock()
_LIBS: dict[str, ctypes.CDLL] = {}
_SCRATCH: dict[tuple[str, torch.dtype], torch.Tensor] = {}
_RETIRED: list[torch.Tensor] = []  # outgrown scratch stays alive: a captured graph may point at it


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


def build(capability: tuple[int, int], out_dir: Path | None = None) -> Path:
    """Compile the shared library for one arch (cached by source, target and compiler); its path."""
    compiler = nvcc()
    if compiler is None:
        raise TurbopackError("CUDA W4 kernels: nvcc not found; set CUDA_HOME or use the Triton kernels")
    tag = hashlib.sha256(SRC.read_bytes() + gencode(capability).encode() + compiler.encode()).hexdigest()[:16]
    out_dir = out_dir or cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"w4_{tag}.so"
    if not lib.exists():
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cmd = [compiler, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", gencode(capability), str(SRC),
               "-o", str(tmp)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise TurbopackError(f"CUDA W4 kernels: nvcc failed ({res.stderr.strip().splitlines()[-1:]}); "
                                 f"use the Triton kernels")
        tmp.replace(lib)  # atomic: a concurrent builder never loads half a file
    return lib


def library(device: torch.device) -> ctypes.CDLL:
    cap = torch.cuda.get_device_capability(device)
    key = f"{cap[0]}{cap[1]}"
    with _LOCK:
        if key not in _LIBS:
            lib = ctypes.CDLL(str(build(cap)))
            dec = lib.turbopack_w4_decode
            dec.restype = ctypes.c_int
            dec.argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_int] * 12 + [ctypes.c_void_p]
            deq = lib.turbopack_w4_dequant
            deq.restype = ctypes.c_int
            deq.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 6 + [ctypes.c_void_p]
            _LIBS[key] = lib
    return _LIBS[key]


def _common_ok(x2: torch.Tensor, packed: dict[str, torch.Tensor]) -> bool:
    return (x2.is_cuda and x2.dtype in _DTYPE_CODE and packed["scales"].dtype == x2.dtype
            and torch.cuda.get_device_capability(x2.device) >= (8, 0) and nvcc() is not None)


def supports(x2: torch.Tensor, fmt, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> bool:
    """Can the decode kernel run this call?"""
    return (_common_ok(x2, packed) and getattr(fmt, "group_size", 0) in DECODE_GROUPS
            and 1 <= x2.shape[0] <= M_MAX and shape[1] % 128 == 0 and x2.stride(1) == 1
            and x2.stride(0) % 8 == 0 and x2.data_ptr() % 16 == 0)


def supports_dequant(x2: torch.Tensor, fmt, packed: dict[str, torch.Tensor]) -> bool:
    return _common_ok(x2, packed) and getattr(fmt, "group_size", 0) in DEQUANT_GROUPS


def default_split(n_pad: int, k: int, device: torch.device) -> int:
    """Split K until the grid covers the SMs about three times (one CTA per 64 rows), keeping at
    least four 128-wide stages per CTA so the cp.async ring fills."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    blocks = math.ceil(n_pad / 64)
    return max(1, min(math.ceil(3 * sms / blocks), max(1, k // 128 // 4)))


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


def _stream(device: torch.device) -> ctypes.c_void_p:
    return ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream)


def w4_decode(x2: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int], bias: torch.Tensor | None,
              split_k: int = 0, out: torch.Tensor | None = None, *, group: int = 128,
              stages: int = DEFAULT_STAGES) -> torch.Tensor:
    """y [M, N] for M <= 16 tokens from a w4_t{16,64}x64 weight (group 64/128); split_k 0 = auto."""
    qw, s = packed["qweight"], packed["scales"]
    nt, kt, tn = qw.shape[0], qw.shape[1], qw.shape[2]
    n, k = shape
    m = x2.shape[0]
    y = out if out is not None else torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    split = int(split_k) if split_k and split_k > 0 else default_split(nt * tn, k, x2.device)
    split = max(1, min(split, k // 128))
    ws, cnt = splitk_buffers(x2.device, m, n, -(-nt * tn // 64), split)
    zeros = packed.get("zeros")  # uint8 [NT, K/G, TN] (asym); None: sym, z = 8
    rc = library(x2.device).turbopack_w4_decode(
        _ptr(x2), _ptr(qw), _ptr(s), _ptr(zeros), _ptr(bias), _ptr(y), _ptr(ws), _ptr(cnt),
        m, n, nt * tn, k, kt, s.shape[1], tn, group, x2.stride(0), split, int(stages), _DTYPE_CODE[x2.dtype],
        _stream(x2.device))
    if rc != 0:
        raise RuntimeError(f"turbopack_w4_decode failed (code {rc}; M={m} N={n} K={k} G={group} stages={stages})")
    return y


def _scratch(device: torch.device, dtype: torch.dtype, numel: int) -> torch.Tensor:
    key = (str(device), dtype)
    buf = _SCRATCH.get(key)
    if buf is None or buf.numel() < numel:
        if buf is not None:
            _RETIRED.append(buf)
        buf = torch.empty(numel, dtype=dtype, device=device)
        _SCRATCH[key] = buf
    return buf


def dequantize(packed: dict[str, torch.Tensor], shape: tuple[int, int], group: int, dtype: torch.dtype) -> torch.Tensor:
    """The contract's 16-bit W [N, K] (a view into a per-device scratch buffer, overwritten by the
    next call) from a w4_t{16,64}x64 weight."""
    qw, s = packed["qweight"], packed["scales"]
    nt, kt, tn = qw.shape[0], qw.shape[1], qw.shape[2]
    w = _scratch(qw.device, dtype, nt * tn * kt * 64)[: nt * tn * kt * 64].view(nt * tn, kt * 64)
    rc = library(qw.device).turbopack_w4_dequant(_ptr(qw), _ptr(s), _ptr(packed.get("zeros")), _ptr(w), nt, kt,
                                                 s.shape[1], tn, group, _DTYPE_CODE[dtype], _stream(qw.device))
    if rc != 0:
        raise RuntimeError(f"turbopack_w4_dequant failed (code {rc})")
    return w[: shape[0], : shape[1]]


def dq_mm(x2: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int], bias: torch.Tensor | None,
          out: torch.Tensor | None = None, *, group: int = 128) -> torch.Tensor:
    """y = x2 @ W^T (+ bias): the packed weight dequantized once, then cuBLAS."""
    w = dequantize(packed, shape, group, x2.dtype)
    if out is None:
        return torch.nn.functional.linear(x2, w, bias)
    if bias is None:
        return torch.mm(x2, w.t(), out=out)
    return torch.addmm(bias, x2, w.t(), out=out)
