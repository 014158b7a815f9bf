"""The warp-specialized CUDA C++ W8A8 and FP8 GEMM on Hopper (csrc/i8_wgws.cu; sm_90a only, built by
cuda_build at first use), launched on torch's current stream (CUDA-graph capturable).

It reads ``i8_rowmajor`` (int8 [NP, KP]) or ``fp8_rowmajor`` (e4m3, the same geometry) as packed and
the per-token codes of w8a8.quantize_rows (int8 or e4m3, the weights' kind; FP8's weight scale per
row or one per tensor): a producer warpgroup copies each 128-k stage as two tensor-map boxes (TMA, in the
128-byte swizzle wgmma reads), two consumer warpgroups issue int8 wgmma (s32 accumulators) on them, and
the epilogue applies the token and row scales (+ bias). A CTA owns 128 weight rows x BM tokens (64,
128 or 256). Config keys (kernel ``cuda_ws`` of the i8_rowmajor family): BM, STAGES, SPLIT_K (0:
wave_split), CLUSTER (the K slices of a tile sum their partials in a thread-block cluster, through
distributed shared memory, instead of fp32 planes in global memory; at most CLUSTER_MAX slices); BN
is always 128.
"""

from __future__ import annotations

import ctypes
import math

import torch

from turbopack.inference.kernels import cuda_build
from turbopack.inference.kernels.cuda_build import ptr as _p
from turbopack.inference.kernels.epilogue import splitk_slices

SRC = cuda_build.CSRC / "i8_wgws.cu"
ROWS = 128  # weight rows a CTA (BN)
STAGE_K = 128
TOKEN_TILES = (256, 128, 64)
DEFAULT_BM, DEFAULT_STAGES = 128, 4
CAPABILITY = (9, 0)
_DTYPE_CODE = {torch.bfloat16: 0, torch.float16: 1}
_SIGNATURES = {"turbopack_i8_wgws": [ctypes.c_void_p] * 8 + [ctypes.c_int] * 12 + [ctypes.c_void_p]}
#: csrc kCodeS8 / kCodeE4M3: the codes' kind, from their dtype
_CODE = {torch.int8: 0, torch.float8_e4m3fn: 1}
#: the largest portable thread-block cluster: CLUSTER's most K slices
CLUSTER_MAX = 8


def library(device: torch.device) -> ctypes.CDLL:
    return cuda_build.library(SRC, device, _SIGNATURES)


def max_stages(bm: int) -> int:
    """The deepest ring whose slots fit shared memory: 4 at BM = 256, 7 at 128, 9 at 64 (the smaller
    tiles' stages are shorter, so they need more of them for a memory latency's worth of copies)."""
    return (cuda_build.SM90_SMEM_MAX - 1024 - 4 * bm) // ((ROWS + bm) * STAGE_K + 16)


def supports(x2: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> bool:
    """Can the kernel run this call? 16-bit activations on an sm90 device, int8 or e4m3 codes 16-byte
    aligned (a tensor map's base) with rows a multiple of 16 bytes (both row-major layouts pad K to
    16), a scale per row or one for the tensor."""
    w = packed["qweight"]
    return (cuda_build.usable(x2) and torch.cuda.get_device_capability(x2.device) == CAPABILITY
            and w.dtype in _CODE and w.data_ptr() % 16 == 0 and w.shape[-1] % 16 == 0
            and packed["scales"].numel() in (1, w.shape[0] * w.shape[1]))


def max_split(kp: int) -> int:
    """The most K slices: at least four 128-k stages each."""
    return max(1, math.ceil(kp / STAGE_K) // 4)


def wave_split(n_pad: int, kp: int, m: int, bm: int, sms: int) -> int:
    """The most K slices whose CTAs (one an SM: 384 threads) fit one wave of ``sms``, at most
    max_split. Run 31: a split that spills into a second wave doubles the slices' time."""
    return max(1, min(sms // (math.ceil(n_pad / ROWS) * math.ceil(m / bm)), max_split(kp)))


def i8_wgws(q: torch.Tensor, sx: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int],
            bias: torch.Tensor | None, y: torch.Tensor, *, bm: int = DEFAULT_BM, stages: int = DEFAULT_STAGES,
            split_k: int = 0, cluster: bool = False, stream: bool = False) -> torch.Tensor:
    """y [M, N] = (q @ W^T) * sx * scales (+ bias): q [>= M, KP] (int8 or e4m3, W's kind) and sx float32
    [M] from w8a8.quantize_rows, W the i8_rowmajor or fp8_rowmajor codes, scales per row or (FP8) one;
    split_k 0 = wave_split; cluster: the slices sum in a thread-block cluster (at most CLUSTER_MAX).
    stream: refused (run 34 measured stream-K here 2-15 us slower than the best split everywhere)."""
    if stream:
        raise ValueError("cuda_ws (w8a8, fp8) has no stream-K (STREAM): the weight-only cuda_ws kernels' only")
    if bm not in TOKEN_TILES:
        raise ValueError(f"cuda_ws (w8a8) has no {bm}-token tile; built: {', '.join(map(str, TOKEN_TILES))}")
    if not 3 <= stages <= max_stages(bm):
        raise ValueError(f"cuda_ws (w8a8) at BM = {bm} takes 3-{max_stages(bm)} stages, not {stages}")
    w, sw = packed["qweight"], packed["scales"]
    if q.dtype != w.dtype:
        raise ValueError(f"cuda_ws: activation codes {q.dtype} against weight codes {w.dtype}")
    np_, kp = w.shape[0] * w.shape[1], w.shape[2]
    n = shape[0]
    m = y.shape[0]
    if split_k and split_k > 0:
        split = int(split_k)
    else:
        split = wave_split(np_, kp, m, bm, torch.cuda.get_device_properties(y.device).multi_processor_count)
    split = max(1, min(split, math.ceil(kp / STAGE_K), CLUSTER_MAX if cluster else kp))
    # store_sliced_rows' planes: a whole ROWS x BM tile each, past N and M too
    rows, toks = math.ceil(np_ / ROWS), math.ceil(m / bm)
    ws, cnt = splitk_slices(y.device, toks * bm, rows * ROWS, rows * toks, split)
    rc = library(y.device).turbopack_i8_wgws(
        _p(q), _p(sx), _p(w), _p(sw), _p(bias), _p(y), _p(ws), _p(cnt), m, n, np_, kp, q.stride(0),
        split, int(bm), int(stages), int(bool(cluster)), _DTYPE_CODE[y.dtype], _CODE[w.dtype], int(sw.numel() > 1),
        cuda_build.stream(y.device))
    if rc != 0:
        raise RuntimeError(f"turbopack_i8_wgws failed (code {rc}; M={m} N={n} KP={kp} BM={bm} stages={stages} "
                           f"split={split} cluster={bool(cluster)})")
    return y
