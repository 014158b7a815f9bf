"""The CUDA C++ NVFP4 weight-only decode kernel (csrc/fp4.cu; built by cuda_build at first use):
nvfp4_t16x64 as packed (e2m1 codes, e4m3 scale per 16, fp32 global scale), bf16/fp16 activations,
M <= 16 tokens, tensor-core GEMV with a cp.async ring (config keys SPLIT_K, STAGES), launched on
torch's current stream (CUDA-graph capturable: no host sync, 1/gs is taken on the device).

Numerics are the layout's contract (docs/layouts.md): w16 = e2m1 * s exactly, fp32 accumulation,
y = fp32(sum) * fp32(1 / gs) (+ bias). Everything else stays on the Triton kernels (dispatch falls back).
"""

from __future__ import annotations

import ctypes
import math

import torch

from turbopack.inference.kernels import cuda_build
from turbopack.inference.kernels.cuda_build import ptr as _p
from turbopack.inference.kernels.epilogue import splitk_buffers

SRC = cuda_build.CSRC / "fp4.cu"
M_MAX = 16
STAGE_K = 128  # one ring stage: two 64-wide layout tiles
STAGES = (3, 4, 6)  # ring depths the kernel is built for
DEFAULT_STAGES = 4
_DTYPE_CODE = {torch.bfloat16: 0, torch.float16: 1}
_SIGNATURES = {
    "turbopack_fp4_decode": [ctypes.c_void_p] * 8 + [ctypes.c_int] * 9 + [ctypes.c_void_p],
}


def library(device: torch.device) -> ctypes.CDLL:
    return cuda_build.library(SRC, device, _SIGNATURES)


def supports(x2: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> bool:
    """Can the kernel run this call? (nvfp4_t16x64 tensors on x's device, 16-byte aligned x rows)"""
    qw, sc, gs = packed["qweight"], packed["scales"], packed["global_scale"]
    return (cuda_build.usable(x2) and qw.dtype == torch.uint8 and qw.dim() == 4 and tuple(qw.shape[2:]) == (16, 32)
            and sc.dtype == torch.float8_e4m3fn and gs.dtype == torch.float32 and gs.is_cuda
            and 1 <= x2.shape[0] <= M_MAX and shape[1] % 16 == 0 and x2.stride(1) == 1
            and x2.stride(0) % 8 == 0 and x2.data_ptr() % 16 == 0 and qw.data_ptr() % 16 == 0
            and sc.data_ptr() % 4 == 0)


def default_split(n_pad: int, k: int, device: torch.device) -> int:
    """Split K until the grid covers the SMs about three times (one CTA per 64 rows), keeping at
    least four 128-wide stages per CTA so the cp.async ring fills."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(math.ceil(3 * sms / math.ceil(n_pad / 64)), max(1, k // STAGE_K // 4)))


def fp4_decode(x2: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int], bias: torch.Tensor | None,
               split_k: int = 0, out: torch.Tensor | None = None, *, stages: int = DEFAULT_STAGES) -> torch.Tensor:
    """y [M, N] = fp32(x2 @ (e2m1 * s)^T) / gs (+ bias) for M <= 16 tokens; split_k 0 = auto."""
    qw, sc, gs = packed["qweight"], packed["scales"], packed["global_scale"]
    n, k = shape
    nt, kt = qw.shape[0], qw.shape[1]
    m = x2.shape[0]
    y = out if out is not None else torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    split = int(split_k) if split_k and split_k > 0 else default_split(nt * 16, k, x2.device)
    split = max(1, min(split, math.ceil(kt / 2)))
    ws, cnt = splitk_buffers(x2.device, m, n, -(-nt * 16 // 64), split)
    b = bias.to(x2.dtype) if bias is not None and bias.dtype != x2.dtype else bias
    rc = library(x2.device).turbopack_fp4_decode(
        _p(x2), _p(qw), _p(sc), _p(gs), _p(b), _p(y), _p(ws), _p(cnt), m, n, nt * 16, k, kt, x2.stride(0), split,
        int(stages), _DTYPE_CODE[x2.dtype], cuda_build.stream(x2.device))
    if rc != 0:
        raise RuntimeError(f"turbopack_fp4_decode failed (code {rc}; M={m} N={n} K={k} stages={stages})")
    return y
