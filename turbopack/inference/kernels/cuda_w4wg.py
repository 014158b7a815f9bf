"""The CUDA C++ W4A16 kernel with Hopper warpgroup MMAs (csrc/w4_wgmma.cu; sm_90a only, built by
cuda_build at first use), for M >= 32 tokens, launched on torch's current stream (CUDA-graph capturable).

A CTA owns BN = 64 (one warpgroup) or 128 (two) weight rows x BM = 32, 64 or 128 tokens. The weights
are wgmma's A operand, decoded into registers from the packed tile (the fragment w4_mma.cu decodes);
x is the B operand, read by the tensor core from shared memory, stored there permuted into the
weights' K order and in the 128-byte swizzle. Config keys (kernel ``cuda_wg``): BN, BM (the token
tile; a call with fewer tokens runs the smallest that covers them, at least 64 at BN = 128), STAGES
(3-5), SPLIT_K (0: cuda_w4mm.default_split; split-K by slices, epilogue.splitk_slices), WREG (the
weights straight from global memory to registers, two stages ahead, instead of through the
shared-memory ring: the ring's shared traffic is what limits the kernel; unset = through the ring). Reads bf16 or
fp16 activations with scales of the same dtype, group 64 or 128, K a multiple of 128.
"""

from __future__ import annotations

import ctypes
import math

import torch

from turbopack.inference.kernels import cuda_build, cuda_w4mm
from turbopack.inference.kernels.cuda_build import ptr as _p
from turbopack.inference.kernels.epilogue import splitk_slices

SRC = cuda_build.CSRC / "w4_wgmma.cu"
BNS = (64, 128)
BMS = (32, 64, 128)
#: the smallest token tile per BN: two warpgroups' 256 threads each copy a whole quarter of a
#: token's 128-k row of x, so 64 tokens at least
MIN_BM = {64: 32, 128: 64}
STAGES = (3, 4, 5)
DEFAULT_BN, DEFAULT_BM, DEFAULT_STAGES = 128, 64, 4
#: wgmma exists on sm_90a only (Blackwell's tensor-core MMA is tcgen05)
CAPABILITY = (9, 0)
_DTYPE_CODE = {torch.bfloat16: 0, torch.float16: 1}
_SIGNATURES = {"turbopack_w4_wgmma": [ctypes.c_void_p] * 8 + [ctypes.c_int] * 15 + [ctypes.c_void_p]}


def library(device: torch.device) -> ctypes.CDLL:
    return cuda_build.library(SRC, device, _SIGNATURES)


def supports(x2: torch.Tensor, fmt, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> bool:
    """Can the kernel run this call? cuda_w4mm's conditions, on an sm90 device."""
    return (cuda_w4mm.supports(x2, fmt, packed, shape)
            and torch.cuda.get_device_capability(x2.device) == CAPABILITY)


def token_tile(m: int, bn: int, bm: int) -> int:
    """The token tile a call of ``m`` tokens runs with BN = ``bn``, BM = ``bm`` (csrc/w4_wgmma.cu by_bm)."""
    return next(t for t in BMS if t >= MIN_BM.get(bn, BMS[-1]) and (t >= min(bm, m) or t == BMS[-1]))


def w4_wgmma(x2: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int], bias: torch.Tensor | None,
             out: torch.Tensor | None = None, *, group: int = 128, bn: int = DEFAULT_BN, bm: int = DEFAULT_BM,
             stages: int = DEFAULT_STAGES, split_k: int = 0, wreg: bool = False) -> torch.Tensor:
    """y [M, N] = x2 @ W^T (+ bias) from a w4_t{16,64}x64 weight (group 64/128); split_k 0 = auto."""
    qw, s = packed["qweight"], packed["scales"]
    nt, kt, tn = qw.shape[0], qw.shape[1], qw.shape[2]
    n, k = shape
    m = x2.shape[0]
    y = out if out is not None else torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    tile = token_tile(m, bn, bm)
    split = int(split_k) if split_k and split_k > 0 else cuda_w4mm.default_split(nt * tn, k, m, bn, tile, x2.device)
    split = max(1, min(split, k // 128))
    ws, cnt = splitk_slices(x2.device, m, n, math.ceil(nt * tn / bn) * math.ceil(m / tile), split)
    rc = library(x2.device).turbopack_w4_wgmma(
        _p(x2), _p(qw), _p(s), _p(packed.get("zeros")), _p(bias), _p(y), _p(ws), _p(cnt),
        m, n, nt * tn, k, kt, s.shape[1], tn, group, x2.stride(0), split, int(bn), int(bm), int(stages),
        int(wreg), _DTYPE_CODE[x2.dtype], cuda_build.stream(x2.device))
    if rc != 0:
        raise RuntimeError(f"turbopack_w4_wgmma failed (code {rc}; M={m} N={n} K={k} G={group} BN={bn} BM={bm} "
                           f"stages={stages} split={split} wreg={wreg})")
    return y
