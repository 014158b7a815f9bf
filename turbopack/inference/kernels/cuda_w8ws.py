"""The warp-specialized CUDA C++ W8A16 prefill kernel on Hopper: csrc/w4_wgws.cu's kernel on int8
weight rows (``turbopack_w8_wgws``, the same library as cuda_w4ws; sm_90a only).

Everything but the weights is cuda_w4ws's: the producer warpgroup's bulk copies onto mbarriers, two
consumer warpgroups issuing wgmma with the weights as its A from registers and x as its B in the
128-byte swizzle, the tiles (TILES), split-K through planes or in a cluster, the store through the
idle ring. A stage's weight row is the i8_t{16,64}x64 tile row's 64 bytes in natural k order; each
consumer thread reads its rows whole and picks each k16 step's four codes (W8Gather), which
common.cuh's i8_pairs turns into 16-bit pairs exactly; the fp32 row scale multiplies the sums once,
before the store, as the weights-only contract says (docs/layouts.md). Config keys (kernel
``cuda_ws`` of the ``i8_t{16,64}x64`` family): BN, BM, STAGES, SPLIT_K, CLUSTER, STREAM, as cuda_w4ws's.
Before it, M >= 64 ran the Triton tensor-core kernel at 0.42-0.82x bf16's speed (run 33, H100).
"""

from __future__ import annotations

import torch

from turbopack.inference.kernels import cuda_build, cuda_w4wg, cuda_w4ws
from turbopack.inference.kernels.cuda_build import ptr as _p
from turbopack.inference.kernels.cuda_w4ws import CLUSTER_MAX, TILES

#: a weight row's bytes in a stage: 64 int8 codes (the row scale is read once, in the epilogue)
ROW_BYTES = 64
__all__ = ["CLUSTER_MAX", "ROW_BYTES", "TILES", "cluster_fits", "max_stages", "supports", "w8_wgws"]


def supports(x2: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> bool:
    """Can the kernel run this call? 16-bit x on an sm90 device, 16-byte aligned (a tensor map's base)
    with rows a multiple of 8 elements, K in whole 128-k blocks with no K padding, the codes and
    scales 16-byte aligned (bulk copies), a scale per row."""
    qw, s = packed["qweight"], packed["scales"]
    return (cuda_build.usable(x2) and torch.cuda.get_device_capability(x2.device) == cuda_w4wg.CAPABILITY
            and x2.dtype in (torch.bfloat16, torch.float16) and qw.dim() == 4 and qw.shape[1] * 64 == shape[1]
            and shape[1] % 128 == 0 and x2.stride(1) == 1 and x2.stride(0) % 8 == 0 and x2.data_ptr() % 16 == 0
            and qw.data_ptr() % 16 == 0 and s.dtype == torch.float32 and s.numel() == qw.shape[0] * qw.shape[2])


def max_stages(bn: int, bm: int) -> int:
    """The deepest ring that fits: 5 at 128 x 256, 9 at 128 x 128, 9 at 256 x 64, 14 at 128 x 64."""
    return cuda_w4ws.max_stages(bn, bm, ROW_BYTES)


def cluster_fits(bn: int, bm: int, stages: int) -> bool:
    return cuda_w4ws.cluster_fits(bn, bm, stages, ROW_BYTES)


def w8_wgws(x2: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int], bias: torch.Tensor | None,
            out: torch.Tensor | None = None, *, bn: int = cuda_w4ws.DEFAULT_BN, bm: int = cuda_w4ws.DEFAULT_BM,
            stages: int = cuda_w4ws.DEFAULT_STAGES, split_k: int = 0, cluster: bool = False,
            stream: bool = False) -> torch.Tensor:
    """y [M, N] = (x2 @ q^T) * s (+ bias) from an i8_t{16,64}x64 weight; split_k 0 = auto; cluster: the
    slices sum in a thread-block cluster (at most CLUSTER_MAX of them); stream: stream-K."""
    cuda_w4ws.check_config(bn, bm, stages, cluster, ROW_BYTES)
    qw, s = packed["qweight"], packed["scales"]
    nt, kt, tn = qw.shape[0], qw.shape[1], qw.shape[2]
    n, k = shape
    m = x2.shape[0]
    y = out if out is not None else torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    split, ctas, ws, cnt = cuda_w4ws.launch_grid(x2.device, nt * tn, k, m, bn, bm, split_k, cluster, stream)
    rc = cuda_w4ws.library(x2.device).turbopack_w8_wgws(
        _p(x2), _p(qw), _p(s), _p(bias), _p(y), _p(ws), _p(cnt), m, n, nt * tn, k, kt, tn, x2.stride(0), split,
        bn // 128, int(bm), int(stages), int(bool(cluster)), ctas, 0 if x2.dtype == torch.bfloat16 else 1,
        cuda_build.stream(x2.device))
    if rc != 0:
        raise RuntimeError(f"turbopack_w8_wgws failed (code {rc}; M={m} N={n} K={k} BN={bn} BM={bm} "
                           f"stages={stages} split={split} cluster={bool(cluster)} stream={ctas})")
    return y
