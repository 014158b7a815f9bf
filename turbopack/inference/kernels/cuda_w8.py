"""The CUDA C++ weight-only 8-bit decode kernel (csrc/w8.cu; built by cuda_build at first use):
int8 (w8a16, w8a8) and float8 e4m3 (fp8) codes in any of the byte layouts (i8_t{16,64}x64,
i8_rowmajor, fp8_t16x64_upcast, fp8_rowmajor), bf16/fp16 activations, M <= 16 tokens, tensor-core GEMV with a
cp.async ring (config keys SPLIT_K, STAGES, VARIANT, CLUSTER): split-K over CTAs, or (VARIANT 4, the
decode by rows) a CTA per 16 rows whose warps split K and sum in shared memory; VARIANT 6 is the
decode by rows on 128-k ring slots (a row's whole 128-byte line per copy: made for fp8_rowmajor).

On sm89/sm90 the fp8 format's own math quantizes activations to e4m3 per token (fp8_rowmajor
through _scaled_mm), and the w8a8 format's to int8 (i8_rowmajor through the Triton int8 GEMM or
_int_mm); for decode this kernel keeps them 16-bit instead, the weights-only math of
fp8_t16x64_upcast and w8a16: y = fp32(sum x16 * q) * s. That is more accurate than the W8A8
contracts (no activation rounding) and reads the same packed bytes; dispatch uses it only where the
tuned table says it is faster.
"""

from __future__ import annotations

import ctypes
import math

import torch

from turbopack.inference.config import Activation
from turbopack.inference.kernels import cuda_build
from turbopack.inference.kernels.cuda_build import ptr as _p
from turbopack.inference.kernels.epilogue import splitk_buffers
from turbopack.inference.kernels.fold import NO_FOLD, FoldArgs

SRC = cuda_build.CSRC / "w8.cu"
M_MAX = 16
STAGE_K = 64
STAGES = (4, 6, 8)  # ring depths the kernel is built for
DEFAULT_STAGES = 6
_CODE = {torch.int8: 0, torch.uint8: 0, torch.float8_e4m3fn: 1}
_DTYPE_CODE = {torch.bfloat16: 0, torch.float16: 1}
_SIGNATURES = {
    "turbopack_w8_decode": [ctypes.c_void_p] * 7 + [ctypes.c_int] * 5 + [ctypes.c_longlong] * 3
    + [ctypes.c_int] * 8 + [ctypes.c_void_p] * 5 + [ctypes.c_float, ctypes.c_int, ctypes.c_int, ctypes.c_void_p],
}
#: VARIANT: 0 (unset) = split-K over CTAs; ROWS = the decode by rows (the number cuda_w4.ROWS has):
#: SPLIT_K is its warps per CTA (ROWS_WARPS, 0 = ROWS_DEFAULT_WARPS); ROWS_WIDE = the same on ring
#: slots of two stages (128 k: K % 128 == 0; elsewhere ROWS at the same ring bytes);
#: value: the ring depths each is built for (ROWS_WIDE's 2 and 3 slots are ROWS' 4 and 6 stages' bytes)
SPLIT, ROWS, ROWS_WIDE = 0, 4, 6
ROWS_VARIANTS = (ROWS, ROWS_WIDE)  # SPLIT_K is their warps a CTA, not a K split
VARIANTS = {SPLIT: STAGES, ROWS: (4, 6), ROWS_WIDE: (2, 3)}
WIDE_K = 2 * STAGE_K
ROWS_WARPS, ROWS_DEFAULT_WARPS = (8, 16), 16

#: the cluster store (CLUSTER, sm_90+): the most split-K CTAs in one cluster (H100/H200: 16, past 8
#: non-portable) and the tokens its kernels take (csrc/w8.cu kClusterBuilt: one token column)
CLUSTER_MAX, CLUSTER_M_MAX = cuda_build.CLUSTER_MAX, 8


def rows_warps(variant: int, m: int) -> tuple[int, ...]:
    """The warps per CTA (SPLIT_K) the rows kernels are built in: the same at every variant and M
    (cuda_w4.rows_warps' signature)."""
    return ROWS_WARPS


def library(device: torch.device) -> ctypes.CDLL:
    return cuda_build.library(SRC, device, _SIGNATURES)


def strides(qweight: torch.Tensor) -> tuple[int, int, int, int]:
    """(TN, s_tile, s_row, s_stage) in bytes of a byte layout's codes: tiled [NT, KT, TN, 64] or
    row-major [NT, TN, K_pad]; byte (n, k) = (n//TN)*s_tile + (n%TN)*s_row + (k//64)*s_stage + k%64.
    Row-major addressing is the same for any tile height, so a row-major layout is read in tiles of
    16 (the kernel's rows g and g + 8 share a tile; i8_rowmajor's own are 8: supports() wants 16 | N_pad)."""
    if qweight.dim() == 4:
        nt, kt, tn, tk = qweight.shape
        return tn, kt * tn * tk, tk, tn * tk
    kp = qweight.shape[2]
    return 16, 16 * kp, kp, STAGE_K


def supports(x2: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> bool:
    """Can the kernel run this call? (K a multiple of 64, so x needs no padding; a 16-row tile)"""
    qw = packed["qweight"]
    tiled_ok = qw.dim() == 3 or qw.shape[3] == 64
    return (cuda_build.usable(x2) and qw.dtype in _CODE and tiled_ok and packed["scales"].dtype == torch.float32
            and 1 <= x2.shape[0] <= M_MAX and shape[1] % STAGE_K == 0 and strides(qw)[0] % 16 == 0
            and n_padded(qw) % 16 == 0 and x2.stride(1) == 1 and x2.stride(0) % 8 == 0 and x2.data_ptr() % 16 == 0)


def n_padded(qweight: torch.Tensor) -> int:
    """The rows the packed codes hold (N rounded up to the layout's tile height)."""
    return qweight.shape[0] * qweight.shape[-2]


def default_split(n_pad: int, k: int, device: torch.device) -> int:
    """Split K until the grid covers the SMs about three times (one CTA per 64 rows), keeping at
    least eight 64-wide stages per CTA so the cp.async ring fills."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(math.ceil(3 * sms / math.ceil(n_pad / 64)), max(1, k // STAGE_K // 8)))


def glu_ok(shape: tuple[int, int], bias: torch.Tensor | None, act: Activation) -> bool:
    """Can ``w8_decode(..., glu=act)`` run this fused [gate; up] (``supports`` being true, a rows
    variant)? An activation it builds, no bias, gate's rows a whole number of 16-row CTAs."""
    return act in cuda_build.ACT_CODE and bias is None and shape[0] % 32 == 0


def w8_decode(x2: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int], bias: torch.Tensor | None,
              split_k: int = 0, out: torch.Tensor | None = None, *, stages: int = DEFAULT_STAGES,
              cluster: bool = False, variant: int = SPLIT, glu: Activation | None = None,
              fold: FoldArgs | None = None) -> torch.Tensor:
    """y [M, N] = fp32(x2 @ q^T) * s (+ bias) for M <= 16 tokens; split_k 0 = auto (rows: its warps,
    0 = 16). ``cluster`` (sm_90+, split <= 16, M <= 8; elsewhere ignored): a row tile's split-K
    CTAs sum their partials in a thread-block cluster's shared memory, not through the global
    workspace (csrc/common.cuh). ``variant`` ROWS: the decode by rows (a CTA per 16 rows, its
    warps split K); ROWS_WIDE: the same on 128-k slots. ``glu`` (the rows variants, no bias, N % 32 ==
    0; ``cuda_w4.glu_ok``'s rules): the weight is a fused [gate; up] and y [M, N / 2] =
    glu(x @ gate.T) * (x @ up.T), the MLP's activation in the same launch (csrc/rows_store.cuh glu_store).
    ``fold`` (the rows variants): the norm fold, as ``cuda_w4.w4_decode``'s (``kernels.fold``)."""
    qw, s = packed["qweight"], packed["scales"]
    tn, s_tile, s_row, s_stage = strides(qw)
    n, k = shape
    if variant == ROWS_WIDE and k % WIDE_K:
        variant, stages = ROWS, 2 * stages
    n_pad = n_padded(qw)
    m = x2.shape[0]
    y = out if out is not None else torch.empty(m, n // 2 if glu else n, dtype=x2.dtype, device=x2.device)
    b = bias.to(x2.dtype) if bias is not None and bias.dtype != x2.dtype else bias
    if variant in ROWS_VARIANTS:  # no workspace: the warps of a CTA sum in its shared memory
        split = int(split_k) if split_k and split_k > 0 else ROWS_DEFAULT_WARPS
        ws = cnt = None
        cluster = False
    else:
        split = int(split_k) if split_k and split_k > 0 else default_split(n_pad, k, x2.device)
        split = max(1, min(split, k // STAGE_K))
        ws, cnt = splitk_buffers(x2.device, m, n, -(-n_pad // 64), split)
        cluster = cluster and 1 < split <= CLUSTER_MAX and m <= CLUSTER_M_MAX and cuda_build.clusters(x2.device)
    rc = library(x2.device).turbopack_w8_decode(
        _p(x2), _p(qw), _p(s), _p(b), _p(y), _p(ws), _p(cnt), m, n, n_pad, k, tn, s_tile, s_row, s_stage,
        1 if s.numel() > 1 else 0, x2.stride(0), split, int(stages), _CODE[qw.dtype], int(cluster), int(variant),
        cuda_build.ACT_CODE[glu] if glu else 0, *(fold or NO_FOLD).c_args(), _DTYPE_CODE[x2.dtype],
        cuda_build.stream(x2.device))
    if rc != 0:
        raise RuntimeError(f"turbopack_w8_decode failed (code {rc}; M={m} N={n} K={k} stages={stages} "
                           f"variant={variant}{f' glu={glu.value}' if glu else ''}{' fold' if fold else ''})")
    return y
