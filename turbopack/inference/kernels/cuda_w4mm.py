"""The CUDA C++ W4A16 kernel for batched decode and short prefill, 16 < M <= 128 (csrc/w4_mma.cu;
built by cuda_build at first use), launched on torch's current stream (CUDA-graph capturable).

A CTA owns BN = 64, 128 or 256 weight rows (warps of WARP_N = 16 rows, or 32 at BN = 128) x BM = 32, 64 or 128
tokens (BN = 256 or WARP_N = 32: at most 64): per 128-k stage the weights, their scales and zero
points and the BM x 128 activation tile go through one cp.async ring in shared memory, and each warp
decodes its weight fragments once per 16 k for BM / 8 MMAs each (WARP_N = 32: two fragments share
every activation fragment read from shared memory). Config keys (kernel ``cuda_mm``): BN, BM (the
token tile; a call with fewer tokens runs the smallest of 32/64/128 that covers them), WARP_N (unset:
16), STAGES (3-5), SPLIT_K (0: ``default_split``; split-K by slices, epilogue.splitk_slices). Reads
bf16 or fp16 activations with scales of the same dtype, group 64 or 128, K a multiple of 128.
"""

from __future__ import annotations

import ctypes
import math

import torch

from turbopack.inference.kernels import cuda_build
from turbopack.inference.kernels.cuda_build import ptr as _p
from turbopack.inference.kernels.epilogue import splitk_slices

SRC = cuda_build.CSRC / "w4_mma.cu"
GROUPS = (64, 128)
BNS = (64, 128, 256)
BMS = (32, 64, 128)
WARP_NS = (16, 32)
#: the largest token tile per BN (16 warps x 128 tokens would need ~190 registers of 128)
MAX_BM = {64: 128, 128: 128, 256: 64}
#: ... and per WARP_N (two fragments x 128 tokens: 128 accumulator registers per thread)
MAX_BM_WARP = {16: 128, 32: 64}
#: the CTA rows WARP_N = 32 is built for (4 warps; run 8's tuner: only gate_up at M = 64 took it, at
#: BN = 128; two more CTA sizes were 8 more kernels of first-use nvcc time for nothing)
BN_WARP32 = (128,)
STAGES = (3, 4, 5)
DEFAULT_BN, DEFAULT_BM, DEFAULT_WARP_N, DEFAULT_STAGES = 128, 64, 16, 4
_DTYPE_CODE = {torch.bfloat16: 0, torch.float16: 1}
_SIGNATURES = {"turbopack_w4_mma": [ctypes.c_void_p] * 8 + [ctypes.c_int] * 15 + [ctypes.c_void_p]}


def library(device: torch.device) -> ctypes.CDLL:
    return cuda_build.library(SRC, device, _SIGNATURES)


def supports(x2: torch.Tensor, fmt, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> bool:
    """Can the kernel run this call? (Any M >= 1; the tuner offers it from M = 17.) The scale and
    zero-point rows are copied in 16-byte chunks, so their storage must be 16-byte aligned."""
    zeros = packed.get("zeros")
    return (cuda_build.usable(x2) and packed["scales"].dtype == x2.dtype
            and getattr(fmt, "group_size", 0) in GROUPS and shape[1] % 128 == 0 and x2.stride(1) == 1
            and x2.stride(0) % 8 == 0 and x2.data_ptr() % 16 == 0 and packed["scales"].data_ptr() % 16 == 0
            and (zeros is None or zeros.data_ptr() % 16 == 0))


def token_tile(m: int, bm: int) -> int:
    """The token tile a call of ``m`` tokens runs with config BM = ``bm`` (csrc/w4_mma.cu by_bm)."""
    return next(t for t in BMS if t >= min(bm, m) or t == BMS[-1])


def default_split(n_pad: int, k: int, m: int, bn: int, bm: int, device: torch.device) -> int:
    """Split K until about two CTAs per SM, keeping at least four 128-wide stages per CTA."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    ctas = math.ceil(n_pad / bn) * math.ceil(m / token_tile(m, bm))
    return max(1, min(math.ceil(2 * sms / ctas), max(1, k // 128 // 4)))


def max_bm(bn: int, warp_n: int) -> int:
    """The largest token tile a CTA of ``bn`` rows in warps of ``warp_n`` runs."""
    return min(MAX_BM.get(bn, BMS[-1]), MAX_BM_WARP.get(warp_n, BMS[-1]))


def w4_mma(x2: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int], bias: torch.Tensor | None,
           out: torch.Tensor | None = None, *, group: int = 128, bn: int = DEFAULT_BN, bm: int = DEFAULT_BM,
           warp_n: int = DEFAULT_WARP_N, stages: int = DEFAULT_STAGES, split_k: int = 0) -> torch.Tensor:
    """y [M, N] = x2 @ W^T (+ bias) from a w4_t{16,64}x64 weight (group 64/128); split_k 0 = auto."""
    qw, s = packed["qweight"], packed["scales"]
    nt, kt, tn = qw.shape[0], qw.shape[1], qw.shape[2]
    n, k = shape
    m = x2.shape[0]
    bm = min(bm, max_bm(bn, warp_n))  # an unknown BN or WARP_N: the library's -1 below
    y = out if out is not None else torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    split = int(split_k) if split_k and split_k > 0 else default_split(nt * tn, k, m, bn, bm, x2.device)
    split = max(1, min(split, k // 128))
    tiles = math.ceil(nt * tn / bn) * math.ceil(m / token_tile(m, bm))
    ws, cnt = splitk_slices(x2.device, m, n, tiles, split)
    rc = library(x2.device).turbopack_w4_mma(
        _p(x2), _p(qw), _p(s), _p(packed.get("zeros")), _p(bias), _p(y), _p(ws), _p(cnt),
        m, n, nt * tn, k, kt, s.shape[1], tn, group, x2.stride(0), split, int(bn), int(warp_n), int(bm), int(stages),
        _DTYPE_CODE[x2.dtype], cuda_build.stream(x2.device))
    if rc != 0:
        raise RuntimeError(f"turbopack_w4_mma failed (code {rc}; M={m} N={n} K={k} G={group} BN={bn} BM={bm} "
                           f"WARP_N={warp_n} stages={stages} split={split})")
    return y
