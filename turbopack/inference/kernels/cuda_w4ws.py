"""The warp-specialized CUDA C++ W4A16 prefill kernel on Hopper (csrc/w4_wgws.cu; sm_90a only, built by
cuda_build at first use), launched on torch's current stream (CUDA-graph capturable).

The operands of cuda_w4wg (weights decoded into wgmma's A registers, x its B in shared memory), a
producer warpgroup that copies every stage by bulk copies (the TMA unit) onto mbarriers, and two
consumer warpgroups that only decode and issue wgmma. A CTA owns 128 weight rows x 256 or 128 tokens,
or 256 or 128 rows x 64 tokens (TILES). x is copied as it is (a tensor map: boxes of BM tokens x 64 k in the
128-byte swizzle); the consumers gather each A fragment's nibbles into wgmma's k order. Config keys
(kernel ``cuda_ws``): BN, BM, STAGES (3 to max_stages: the deepest ring that fits shared memory),
SPLIT_K (0: wave_split), CLUSTER (the K slices of a tile sum their partials in a thread-block
cluster, through distributed shared memory, instead of fp32 planes in global memory: split <=
CLUSTER_MAX and the partials within the ring, cluster_fits), STREAM (stream-K, csrc/ws_stream.cuh: one
CTA an SM over every tile's stages in equal runs, where splits leave SMs idle: epilogue.stream_ctas). Reads
bf16 or fp16 activations with scales of the same dtype, group 64 or 128, K a multiple of 128.
"""

from __future__ import annotations

import ctypes
import math

import torch

from turbopack.inference.kernels import cuda_build, cuda_w4wg
from turbopack.inference.kernels.cuda_build import ptr as _p
from turbopack.inference.kernels.epilogue import plane_buffers, stream_ctas, stream_planes

SRC = cuda_build.CSRC / "w4_wgws.cu"
#: (BN, BM) built: 128 rows (one 64-row A tile a consumer warpgroup) x 256, 128 or 64 tokens, 256 rows
#: (two) x 64 tokens (M = 64: the weights' bytes, not the MMAs, bound it there; 128 x 64, run 32,
#: twice the CTAs of a layer: qkv's 24 row tiles of 256 left 108 SMs idle). 256 x 128 spilled:
#: 128 accumulators and two sets of 32 A registers a thread
TILES = ((128, 256), (128, 128), (256, 64), (128, 64))
DEFAULT_BN, DEFAULT_BM, DEFAULT_STAGES = 128, 256, 4
_DTYPE_CODE = {torch.bfloat16: 0, torch.float16: 1}
#: the library's entry points: W4A16 here, W8A16 (the same kernel on int8 rows) for cuda_w8ws
_SIGNATURES = {"turbopack_w4_wgws": [ctypes.c_void_p] * 8 + [ctypes.c_int] * 16 + [ctypes.c_void_p],
               "turbopack_w8_wgws": [ctypes.c_void_p] * 7 + [ctypes.c_int] * 14 + [ctypes.c_void_p]}
#: a weight row's bytes in a stage (64 k): 32 of nibbles, its group's 16-bit scale and uint8 zero point
ROW_BYTES = 35
#: the largest portable thread-block cluster: CLUSTER's most K slices
CLUSTER_MAX = 8


def library(device: torch.device) -> ctypes.CDLL:
    return cuda_build.library(SRC, device, _SIGNATURES)


def supports(x2: torch.Tensor, fmt, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> bool:
    """Can the kernel run this call? cuda_w4wg's conditions (cuda_w4mm's on an sm90 device: x 16-byte
    aligned, as a tensor map's base must be), with the packed tensors 16-byte aligned (bulk copies)."""
    return (cuda_w4wg.supports(x2, fmt, packed, shape)
            and all(t.data_ptr() % 16 == 0 for t in packed.values() if t is not None))


def max_split(k: int) -> int:
    """The most K slices: at least eight 64-k stages each."""
    return max(1, k // 64 // 8)


def wave_split(n_pad: int, k: int, m: int, bn: int, bm: int, sms: int) -> int:
    """The most K slices whose CTAs (one an SM: 384 threads, 150-190 KB of ring) fit one wave of
    ``sms``, at most max_split(k) (the default, and the tuner's largest candidate). Run 31: a split
    that spills into a second wave doubles the slices' time."""
    return max(1, min(sms // (math.ceil(n_pad / bn) * math.ceil(m / bm)), max_split(k)))


def slot_bytes(bn: int, bm: int, row_bytes: int = ROW_BYTES) -> int:
    """A ring slot (csrc WsSlot): x [BM][128 B], then BN weight rows of ``row_bytes`` each (W4A16:
    nibbles, scales and zeros; W8A16: cuda_w8ws.ROW_BYTES), 1024-aligned."""
    return math.ceil((bm * 128 + bn * row_bytes) / 1024) * 1024


def max_stages(bn: int, bm: int, row_bytes: int = ROW_BYTES) -> int:
    """The deepest ring whose slots fit shared memory: W4A16 6 at 128 x 256, 10 at 128 x 128, 13 at
    256 x 64, 17 at 128 x 64.
    A slot is one 64-k stage; the smaller tiles' stages are shorter, so they need more of them to keep
    a memory latency's worth of copies in flight."""
    # the alignment, two mbarriers a slot
    return (cuda_build.SM90_SMEM_MAX - 1024) // (slot_bytes(bn, bm, row_bytes) + 16)


def cluster_fits(bn: int, bm: int, stages: int, row_bytes: int = ROW_BYTES) -> bool:
    """CLUSTER's partials (8 consumer warps x BN / 128 x BM / 8 float4 columns of 32 lanes) in the ring."""
    return 8 * (bn // 128) * (bm // 8) * 32 * 16 <= stages * slot_bytes(bn, bm, row_bytes)


def plane_slices(device: torch.device, n_pad: int, m: int, bn: int, bm: int, planes: int):
    """(planes, counters) for split-K and stream-K through global planes (csrc/ws_store.cuh
    store_sliced_rows, ws_stream.cuh sk_publish): a whole BN x BM tile of fp32 a plane, past N and M
    too, in the accumulators' layout; dummies where ``planes`` is 0."""
    rows, toks = math.ceil(n_pad / bn), math.ceil(m / bm)
    return plane_buffers(device, planes, toks * bm, rows * bn, rows * toks)


def check_config(bn: int, bm: int, stages: int, cluster: bool, row_bytes: int = ROW_BYTES) -> None:
    """A ValueError naming what is wrong where the kernel would refuse the config (-1)."""
    if (bn, bm) not in TILES:
        raise ValueError(f"cuda_ws has no {bn} x {bm} tile; built: {', '.join(f'{a} x {b}' for a, b in TILES)}")
    if not 3 <= stages <= max_stages(bn, bm, row_bytes):
        raise ValueError(f"cuda_ws at {bn} x {bm} takes 3-{max_stages(bn, bm, row_bytes)} stages, not {stages}")
    if cluster and not cluster_fits(bn, bm, stages, row_bytes):
        raise ValueError(f"cuda_ws CLUSTER at {bn} x {bm} needs a deeper ring than {stages} stages for its partials")


def grid_plan(n_pad: int, k: int, m: int, bn: int, bm: int, split_k: int, cluster: bool, stream: bool,
              sms: int) -> tuple[int, int, int]:
    """(split, stream-K CTAs or 0, fp32 planes it writes) of one call. STREAM runs stream-K where it applies
    (epilogue.stream_ctas: fewer tiles than SMs) and otherwise the default split, so a tuned bucket's
    STREAM entry serves the M and N it was not measured at too."""
    tiles = math.ceil(n_pad / bn) * math.ceil(m / bm)
    ctas = stream_ctas(tiles, k // 64, sms) if stream else 0
    if ctas:
        return 1, ctas, stream_planes(tiles, k // 64, ctas)
    if stream:
        split_k, cluster = 0, False
    split = int(split_k) if split_k and split_k > 0 else wave_split(n_pad, k, m, bn, bm, sms)
    split = max(1, min(split, k // 64, CLUSTER_MAX if cluster else k))
    return split, 0, 0 if cluster or split == 1 else split  # CLUSTER sums in distributed shared memory


def launch_grid(device: torch.device, n_pad: int, k: int, m: int, bn: int, bm: int, split_k: int, cluster: bool,
                stream: bool) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """(split, stream-K CTAs or 0, planes, counters) of one call of either entry point (grid_plan)."""
    if stream and cluster:
        raise ValueError("cuda_ws: STREAM and CLUSTER exclude each other (stream-K sums through planes)")
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    split, ctas, planes = grid_plan(n_pad, k, m, bn, bm, split_k, cluster, stream, sms)
    return split, ctas, *plane_slices(device, n_pad, m, bn, bm, planes)


def w4_wgws(x2: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int], bias: torch.Tensor | None,
            out: torch.Tensor | None = None, *, group: int = 128, bn: int = DEFAULT_BN, bm: int = DEFAULT_BM,
            stages: int = DEFAULT_STAGES, split_k: int = 0, cluster: bool = False,
            stream: bool = False) -> torch.Tensor:
    """y [M, N] = x2 @ W^T (+ bias) from a w4_t{16,64}x64 weight (group 64/128); split_k 0 = auto;
    cluster: the slices sum in a thread-block cluster (at most CLUSTER_MAX of them); stream: stream-K."""
    check_config(bn, bm, stages, cluster)
    qw, s = packed["qweight"], packed["scales"]
    nt, kt, tn = qw.shape[0], qw.shape[1], qw.shape[2]
    n, k = shape
    m = x2.shape[0]
    y = out if out is not None else torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    split, ctas, ws, cnt = launch_grid(x2.device, nt * tn, k, m, bn, bm, split_k, cluster, stream)
    rc = library(x2.device).turbopack_w4_wgws(
        _p(x2), _p(qw), _p(s), _p(packed.get("zeros")), _p(bias), _p(y), _p(ws), _p(cnt),
        m, n, nt * tn, k, kt, s.shape[1], tn, group, x2.stride(0), split, bn // 128, int(bm), int(stages),
        int(bool(cluster)), ctas, _DTYPE_CODE[x2.dtype], cuda_build.stream(x2.device))
    if rc != 0:
        raise RuntimeError(f"turbopack_w4_wgws failed (code {rc}; M={m} N={n} K={k} G={group} BN={bn} BM={bm} "
                           f"stages={stages} split={split} cluster={bool(cluster)} stream={ctas})")
    return y
