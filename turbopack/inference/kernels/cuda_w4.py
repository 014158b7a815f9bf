"""The CUDA C++ W4A16 kernels (csrc/w4.cu; built by cuda_build at first use, cached on disk),
launched on torch's current stream (CUDA-graph capturable). Two kernels:

  decode   M <= 16 tokens: tensor-core GEMV with a cp.async ring (config keys SPLIT_K, STAGES, VARIANT:
           0 = v5, 1 = v6 with the sum of x per group once per CTA, 2 = v7: v6 with the scales in the
           ring, 3 = v8: v7 on a persistent stripe schedule, SPLIT_K read as CTAs per SM; 4 = rows: a
           CTA per 16 rows whose warps split K, M <= 8, SPLIT_K read as its warps; 6 = rows with x per
           stage and the zero points out in the A registers, M <= 16; csrc/w4.cu)
  dq_mm    any M: the packed codes dequantized into a scratch 16-bit W (one coalesced pass, the
           contract's weights bit for bit), then one cuBLAS GEMM; wins where the GEMM's time
           dwarfs the extra pass (prefill; the tuned table says from which M)

Both read bf16 or fp16 activations with scales of the same dtype; decode needs group 64 or 128,
dq_mm any group. Everything else stays on the Triton kernels (dispatch falls back).
"""

from __future__ import annotations

import ctypes
import math

import torch

from turbopack.inference.config import Activation
from turbopack.inference.kernels import cuda_build
from turbopack.inference.kernels.cuda_build import gencode, nvcc  # noqa: F401 (the build test's names)
from turbopack.inference.kernels.cuda_build import ptr as _p
from turbopack.inference.kernels.epilogue import splitk_buffers
from turbopack.inference.kernels.fold import NO_FOLD, FoldArgs

SRC = cuda_build.CSRC / "w4.cu"
DECODE_GROUPS = (64, 128)
DEQUANT_GROUPS = (32, 64, 128)
M_MAX = 16
STAGES = (4, 6)  # ring depths the v5 decode kernel is built for (csrc/w4.cu)
#: variant -> ring depths it is built for: 0 = v5, 1 = v6 (sum of x per group once per CTA, in shared memory),
#: 2 = v7 (v6 with the scales and zero points copied through the cp.async ring with the weights),
#: 3 = v8 (v7's stage loop on persistent stripes of (row tile, stage) items; SPLIT_K = CTAs per SM, 0 = all that fit)
#: 4 = rows (a CTA per 16 rows, K split among its warps and summed in shared memory, no split-K workspace;
#: SPLIT_K = its warps, ROWS_WARPS, 0 = 16; M <= 8, else v7 at the default split; csrc/w4_rows.cuh)
#: 5 = rows of 64 (rows with 4 row tiles a CTA: its warps are 4 x SPLIT_K / 4 K slices, which share x)
#: 6 = rows with x per stage (rows' CTA; x from L1 stage by stage, q - z made in the A registers, so no
#: staged x or sums of x: M <= 16 in two token columns; csrc/w4_rowsx.cuh)
VARIANTS = {0: STAGES, 1: (4, 6, 8), 2: (4, 6, 8), 3: (4, 6), 4: (4,), 5: (4,), 6: (4,)}
V7, V8, ROWS, ROWS64, ROWS_X = 2, 3, 4, 5, 6
ROWS_VARIANTS = (ROWS, ROWS64, ROWS_X)  # SPLIT_K is their warps a CTA, not a K split
ROWS_WARPS, ROWS_DEFAULT_WARPS = (8, 16), 16
#: VARIANT 6 at two token columns (M > 8) is also built in 4 warps a CTA: 5 CTAs an SM under a
#: 96-register cap, where 8 and 16 warps hold 2 and 1 (csrc/w4_rowsx.cuh rowsx_ctas)
ROWS_X_WARPS_TWO_COLUMNS = (4, 8, 16)

#: v7's cluster store (CLUSTER): the most split-K CTAs in one cluster (H100/H200: 16, past 8
#: non-portable), and the kernels built with it (csrc/w4.cu kClusterBuilt: one token column, so
#: M <= 8, at rings 4 and 6); elsewhere v7 takes the global split-K path
CLUSTER_MAX, CLUSTER_M_MAX, CLUSTER_STAGES = cuda_build.CLUSTER_MAX, 8, (4, 6)
DEFAULT_STAGES = 4
DEFAULT_VARIANT = 0
_DTYPE_CODE = {torch.bfloat16: 0, torch.float16: 1}
_SIGNATURES = {
    "turbopack_w4_decode": [ctypes.c_void_p] * 8 + [ctypes.c_int] * 15 + [ctypes.c_void_p] * 5
                           + [ctypes.c_float, ctypes.c_int, ctypes.c_int, ctypes.c_void_p],
    "turbopack_w4_dequant": [ctypes.c_void_p] * 4 + [ctypes.c_int] * 6 + [ctypes.c_void_p],
}
_SCRATCH: dict[tuple[str, torch.dtype], torch.Tensor] = {}
_RETIRED: list[torch.Tensor] = []  # outgrown scratch stays alive: a captured graph may point at it


def rows_warps(variant: int, m: int) -> tuple[int, ...]:
    """The warps per CTA (SPLIT_K) that decode-by-rows ``variant`` is built in at M tokens."""
    return ROWS_X_WARPS_TWO_COLUMNS if variant == ROWS_X and m > 8 else ROWS_WARPS


def library(device: torch.device) -> ctypes.CDLL:
    return cuda_build.library(SRC, device, _SIGNATURES)


def _common_ok(x2: torch.Tensor, packed: dict[str, torch.Tensor]) -> bool:
    return (x2.is_cuda and x2.dtype in _DTYPE_CODE and packed["scales"].dtype == x2.dtype
            and torch.cuda.get_device_capability(x2.device) >= (8, 0) and nvcc() is not None)


def supports(x2: torch.Tensor, fmt, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> bool:
    """Can the decode kernel run this call?"""
    return (_common_ok(x2, packed) and getattr(fmt, "group_size", 0) in DECODE_GROUPS
            and 1 <= x2.shape[0] <= M_MAX and shape[1] % 128 == 0 and x2.stride(1) == 1
            and x2.stride(0) % 8 == 0 and x2.data_ptr() % 16 == 0)


def glu_ok(packed: dict[str, torch.Tensor], shape: tuple[int, int], bias: torch.Tensor | None,
           act: Activation) -> bool:
    """Can ``w4_decode(..., variant=ROWS_X, glu=act)`` run this fused [gate; up] (``supports`` being
    true)? An activation it builds, no bias, gate's rows a whole number of the kernel's 16-row CTAs,
    and 16-byte aligned scales and zeros (the ring's chunk copies; elsewhere the rows kernels fall
    back to v7, which has no GLU)."""
    return act in cuda_build.ACT_CODE and bias is None and shape[0] % 32 == 0 and chunks_aligned(packed)


def chunks_aligned(packed: dict[str, torch.Tensor]) -> bool:
    """Scales and zeros 16-byte aligned: the rows kernels' ring copies them in chunks (elsewhere
    they fall back to v7, which has neither the GLU nor the fold)."""
    return all(t.data_ptr() % 16 == 0 for t in (packed["scales"], packed.get("zeros")) if t is not None)


def n_padded(qweight: torch.Tensor) -> int:
    """The rows a w4_t{16,64}x64 qweight [NT, KT, TN] holds (N rounded up to the tile height)."""
    return qweight.shape[0] * qweight.shape[2]


def supports_dequant(x2: torch.Tensor, fmt, packed: dict[str, torch.Tensor]) -> bool:
    return _common_ok(x2, packed) and getattr(fmt, "group_size", 0) in DEQUANT_GROUPS


def default_split(n_pad: int, k: int, device: torch.device) -> int:
    """Split K until the grid covers the SMs about three times (one CTA per 64 rows), keeping at
    least four 128-wide stages per CTA so the cp.async ring fills."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    blocks = math.ceil(n_pad / 64)
    return max(1, min(math.ceil(3 * sms / blocks), max(1, k // 128 // 4)))


def xsum_bytes(per: int, group: int, ntok: int) -> int:
    """Shared memory of v6's sum-of-x table for ``per`` stages per CTA (csrc/w4_v67.cuh xsum_bytes: a
    float2 per stage, group, token column of 8 and quad lane)."""
    return per * (128 // group) * ntok * 4 * 8


def v8_stripe(cta: int, items: int, grid: int) -> tuple[int, int]:
    """The items [lo, hi) of v8's CTA ``cta`` (csrc/w4_v8.cuh stripe_lo): ``items`` = row tiles x stages,
    tile-major, cut into ``grid`` <= items contiguous stripes of floor or ceil(items / grid)."""
    return cta * items // grid, (cta + 1) * items // grid


def v8_owner(item: int, items: int, grid: int) -> int:
    """The CTA whose stripe holds ``item`` (csrc/w4_v8.cuh stripe_owner)."""
    return ((item + 1) * grid - 1) // items


def v8_arrivals(tile: int, stages: int, items: int, grid: int) -> int:
    """How many CTAs store partial sums of row tile ``tile``: the owners of its first and last
    items and every one between (the count the kernel's last CTA waits for, without waiting)."""
    return v8_owner(tile * stages + stages - 1, items, grid) - v8_owner(tile * stages, items, grid) + 1


def v8_grid(tiles: int, stages: int, sms: int, per_sm: int) -> int:
    """v8's CTAs: one per SM slot (``per_sm`` of them per SM, the occupancy's), never more than items."""
    return min(tiles * stages, sms * max(1, per_sm))


def w4_decode(x2: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int], bias: torch.Tensor | None,
              split_k: int = 0, out: torch.Tensor | None = None, *, group: int = 128,
              stages: int = DEFAULT_STAGES, variant: int = DEFAULT_VARIANT, prefetch: bool = False,
              cluster: bool = False, glu: Activation | None = None, fold: FoldArgs | None = None) -> torch.Tensor:
    """y [M, N] for M <= 16 tokens from a w4_t{16,64}x64 weight (group 64/128); split_k 0 = auto
    (v8: CTAs per SM, 0 = as many as fit; rows: warps per CTA, 0 = 16). ``prefetch`` (v7; layout
    tiles of <= 64 rows): each CTA sends its weight slice past the ring's first stages to L2 first
    (csrc/w4_v67.cuh). ``cluster`` (v7 on sm_90+, split <= 16; elsewhere ignored): a row tile's
    split-K CTAs sum their partials in a thread-block cluster's shared memory, not through the
    global workspace (csrc/common.cuh). ``glu`` (VARIANT 6, no bias, N % 32 == 0; see ``glu_ok``): the
    weight is a fused [gate; up] and y [M, N / 2] = glu(x @ gate.T) * (x @ up.T), the MLP's activation
    in the same launch (csrc/w4_rowsx.cuh). ``fold`` (VARIANT 6): the residual add and the next RMSNorm
    in its store, or a folded norm's x (``kernels.fold.FoldArgs``)."""
    qw, s = packed["qweight"], packed["scales"]
    nt, kt, tn = qw.shape[0], qw.shape[1], qw.shape[2]
    n, k = shape
    m = x2.shape[0]
    y = out if out is not None else torch.empty(m, n // 2 if glu else n, dtype=x2.dtype, device=x2.device)
    if variant in ROWS_VARIANTS:  # SPLIT_K is its warps; split-K buffers for v7, its fallback
        split = int(split_k) if split_k and split_k > 0 else ROWS_DEFAULT_WARPS
        ws, cnt = splitk_buffers(x2.device, m, n, -(-nt * tn // 64), default_split(nt * tn, k, x2.device))
    elif variant == V8:  # SPLIT_K is CTAs per SM; any tile may be shared by several stripes: split-K buffers
        split = max(0, int(split_k or 0))
        ws, cnt = splitk_buffers(x2.device, m, n, -(-nt * tn // 64), 2)
    else:
        split = int(split_k) if split_k and split_k > 0 else default_split(nt * tn, k, x2.device)
        split = max(1, min(split, k // 128))
        ws, cnt = splitk_buffers(x2.device, m, n, -(-nt * tn // 64), split)
    cluster = cluster and variant == V7 and 1 < split <= CLUSTER_MAX and cuda_build.clusters(x2.device)
    zeros = packed.get("zeros")  # uint8 [NT, K/G, TN] (asym); None: sym, z = 8
    rc = library(x2.device).turbopack_w4_decode(
        _p(x2), _p(qw), _p(s), _p(zeros), _p(bias), _p(y), _p(ws), _p(cnt),
        m, n, nt * tn, k, kt, s.shape[1], tn, group, x2.stride(0), split, int(stages), int(variant), int(prefetch),
        int(cluster), cuda_build.ACT_CODE[glu] if glu else 0, *(fold or NO_FOLD).c_args(),
        _DTYPE_CODE[x2.dtype], cuda_build.stream(x2.device))
    if rc != 0:
        raise RuntimeError(f"turbopack_w4_decode failed (code {rc}; M={m} N={n} K={k} G={group} stages={stages} "
                           f"variant={variant}{f' glu={glu.value}' if glu else ''}{' fold' if fold else ''})")
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
    rc = library(qw.device).turbopack_w4_dequant(_p(qw), _p(s), _p(packed.get("zeros")), _p(w), nt, kt, s.shape[1],
                                                 tn, group, _DTYPE_CODE[dtype], cuda_build.stream(qw.device))
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
