"""Config sweep for the linear kernels: candidate configs per (layout, N, K, M), compiled ahead in
parallel worker processes (Triton's on-disk cache then serves the timing process), each checked
against the reference before it is timed; the fastest valid one wins (configs/<arch>.json).
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import torch

from turbopack.inference.kernels import cuda_i8ws, cuda_w4, cuda_w4mm, cuda_w4wg, cuda_w4ws, cuda_w8, cuda_w8ws
from turbopack.inference.kernels.bench import SETUPS
from turbopack.inference.kernels.config import KernelConfig, KernelName
from turbopack.inference.kernels.epilogue import stream_ctas

#: the bench.SETUPS whose codes the CUDA 8-bit decode reads (cuda_w8; w8a8's and fp8's with 16-bit x)
W8_SETUPS = ("w8a16", "fp8", "fp8_upcast", "w8a8")
#: (BN, BK, num_warps, num_stages) for the one-token GEMV
_GEMV = [(16, 256, 2, 1), (16, 512, 4, 1), (32, 256, 4, 1), (32, 512, 4, 2), (64, 256, 4, 1), (64, 512, 8, 1),
         (32, 128, 4, 3), (64, 256, 8, 3)]
#: (BN, BK, num_warps, num_stages) for tensor-core decode (BM = 16..64)
_TC_SMALL = [(64, 128, 4, 3), (64, 256, 4, 3), (128, 128, 8, 3), (64, 128, 4, 4), (128, 256, 8, 2), (32, 128, 4, 3)]
#: (BN, BM, BK, num_warps, num_stages) for prefill (the first is weight_only.default_config's)
_TC_LARGE = [(128, 128, 64, 8, 3), (128, 128, 128, 8, 3), (128, 256, 128, 8, 2), (256, 128, 128, 8, 3),
             (128, 128, 64, 4, 4), (64, 256, 128, 4, 3), (128, 64, 128, 4, 4)]
#: int8 GEMM: (BM, BN, BK, num_warps, num_stages)
_I8_SMALL = [(16, 32, 256, 4, 4), (16, 64, 128, 4, 4), (16, 64, 256, 4, 3), (16, 128, 128, 4, 4), (16, 64, 512, 4, 2),
             (16, 128, 256, 8, 3)]
_I8_LARGE = [(128, 128, 128, 8, 4), (128, 256, 128, 8, 3), (256, 128, 128, 8, 3), (128, 128, 64, 4, 4),
             (64, 128, 128, 4, 4), (64, 256, 128, 8, 3)]


def _splits(blocks: int, iters: int, sms: int) -> list[int]:
    s0 = max(1, min(math.ceil(4 * sms / blocks), iters))
    return sorted({s0, max(1, min(2 * s0, iters, 32))})


#: the CUDA decode variants whose SPLIT_K is their warps a CTA (W4: rows, rows of 64, rows with x per
#: stage; 8-bit: rows, rows on wide slots), not a K split
ROWS_VARIANTS = frozenset(cuda_w4.ROWS_VARIANTS + cuda_w8.ROWS_VARIANTS)


def rows_candidates(setup: str, m: int, k: int = 0) -> list[KernelConfig]:
    """The decode by rows' configs for (setup, M, K), SPLIT_K its warps per CTA, at each ring depth it
    is built for: the 8-bit kernel's at M <= 16 (cuda_w8; also on 128-k slots where K allows),
    W4A16's 16- and 64-row CTAs at M <= 8 (cuda_w4: one token column; ring 4 only, which won every
    8B layer in run 14) and its rows with x per stage at M <= 16 (past 8 in 4 warps too:
    cuda_w4.rows_warps); none elsewhere. k = 0: any K."""
    if setup in W8_SETUPS and m <= cuda_w8.M_MAX:
        wide = k % cuda_w8.WIDE_K == 0  # csrc/w8.cu Slot
        mod, variants = cuda_w8, cuda_w8.ROWS_VARIANTS if wide else (cuda_w8.ROWS,)
    elif setup == "w4a16" and m <= cuda_w4.M_MAX:
        mod, variants = cuda_w4, cuda_w4.ROWS_VARIANTS if m <= 8 else (cuda_w4.ROWS_X,)
    else:
        return []
    return [KernelConfig(KernelName.CUDA, split_k=w, ring_stages=st, variant=v)
            for v in variants for w in mod.rows_warps(v, m) for st in mod.VARIANTS[v]]


def candidates(setup: str, n: int, k: int, m: int, sms: int, hopper: bool | None = None) -> list[KernelConfig]:
    """Every config the tuner times for one (setup, N x K, M); ``hopper`` (None: the current CUDA
    device is sm90) adds the warpgroup-MMA kernel and the decode kernels' split-K in a CTA cluster."""
    if hopper is None:
        hopper = torch.cuda.is_available() and torch.cuda.get_device_capability() == cuda_w4wg.CAPABILITY
    layout, params = SETUPS[setup]
    w8: list[KernelConfig] = []
    if setup in W8_SETUPS and m <= 16:  # the CUDA C++ 8-bit decode kernel
        base = _splits(math.ceil(n / 64), k // 64, sms)
        for sk in sorted(set(base + [max(1, base[0] // 2)])):
            w8 += [KernelConfig(KernelName.CUDA, split_k=sk, ring_stages=st) for st in (4, 6, 8)]  # cuda_w8.STAGES
            if hopper and m <= cuda_w8.CLUSTER_M_MAX and 1 < sk <= cuda_w8.CLUSTER_MAX:  # split-K in a CTA cluster
                w8 += [KernelConfig(KernelName.CUDA, split_k=sk, ring_stages=st, cluster=True) for st in (4, 6, 8)]
        w8 += rows_candidates(setup, m, k)
    if layout == "fp8_rowmajor":  # _scaled_mm, and on Hopper the e4m3 warp-specialized GEMM
        return w8 + [KernelConfig(KernelName.SCALED_MM)] + (_i8_ws_candidates(n, k, m, sms)
                                                              if hopper and m >= WS_MIN_M else [])
    if layout == "i8_rowmajor":
        return w8 + _i8_candidates(n, k, m, sms, hopper)
    ks = params.get("group_size", 64)
    out: list[KernelConfig] = w8
    if m == 1:
        rounding = [True, False] if setup == "w4a16" else [False]
        for bn, bk, w, st in _GEMV:
            for s in _splits(math.ceil(n / bn), math.ceil(k / max(bk, ks)), sms):
                out += [KernelConfig(KernelName.GEMV, block_n=bn, block_k=bk, split_k=s, round_weights=r,
                                     num_warps=w, num_stages=st) for r in rounding]
    if setup == "w4a16" and m <= 16:  # the CUDA C++ decode kernel (one CTA per 64 rows)
        base = _splits(math.ceil(n / 64), k // 128, sms)
        for sk in sorted(set(base + [max(1, base[0] // 2)])):
            for stages in (4, 6):  # v5 (VARIANT unset): of cuda_w4.STAGES, the ones that won on the H200
                out.append(KernelConfig(KernelName.CUDA, split_k=sk, ring_stages=stages))
            # v6 at its deeper rings, v7 (v6 + scales in the ring) at all of cuda_w4.VARIANTS[2], with and
            # without its L2 prefetch of the CTA's slice (PREFETCH), and on Hopper split-K through a
            # CTA cluster (CLUSTER) where its kernels are built
            out += [KernelConfig(KernelName.CUDA, split_k=sk, ring_stages=st, variant=1) for st in (6, 8)]
            out += [KernelConfig(KernelName.CUDA, split_k=sk, ring_stages=st, variant=2, prefetch=pf)
                    for st in (4, 6, 8) for pf in (None, True)]
            if hopper and m <= cuda_w4.CLUSTER_M_MAX and 1 < sk <= cuda_w4.CLUSTER_MAX:
                out += [KernelConfig(KernelName.CUDA, split_k=sk, ring_stages=st, variant=2, cluster=True)
                        for st in cuda_w4.CLUSTER_STAGES]
        # v8 (persistent stripes): no split; SPLIT_K = CTAs per SM, 0 = all that fit (8 at M = 1, group 128)
        out += [KernelConfig(KernelName.CUDA, split_k=per_sm, ring_stages=st, variant=3)
                for per_sm in (0, 4) for st in (4, 6)]
        out += rows_candidates(setup, m)
    if setup == "nvfp4" and m <= 16:  # the CUDA C++ NVFP4 decode kernel (one CTA per 64 rows, 128-k stages)
        base = _splits(math.ceil(n / 64), math.ceil(k / 128), sms)
        for sk in sorted(set(base + [max(1, base[0] // 2)])):
            out += [KernelConfig(KernelName.CUDA, split_k=sk, ring_stages=st) for st in (3, 4, 6)]  # cuda_fp4.STAGES
    if setup == "w4a16" and m >= 16:  # the packed weight dequantized once, then cuBLAS
        out.append(KernelConfig(KernelName.DQ_MM))
    if setup == "w4a16" and 16 < m <= 256:
        out += _mma_candidates(n, k, m, sms)
    if setup == "w4a16" and m > 16 and hopper:
        out += _wgmma_candidates(n, k, m, sms)
    if setup == "w4a16" and m >= WS_MIN_M and hopper:
        out += _ws_candidates(n, k, m, sms)
    if setup == "w8a16" and m >= WS_MIN_M and hopper and k % 128 == 0:  # cuda_w8ws: the same kernel on int8 rows
        out += _ws_candidates(n, k, m, sms, cuda_w8ws.ROW_BYTES)
    return out + (_tc_small(setup, n, k, m, ks, sms) if m <= 64 else _tc_large(n, m, sms))


def _mma_candidates(n: int, k: int, m: int, sms: int) -> list[KernelConfig]:
    """The CUDA C++ multi-column kernel (cuda_w4mm): 64, 128 or 256 weight rows per CTA in warps of
    16 rows (or 32 at 128), two token tiles (BN = 256 or warps of 32: up to 64 tokens), ring depths 3 and 4,
    no split, 2, 4 and the splits that bring the grid to one and two waves."""
    out = []
    for bn in cuda_w4mm.BNS:
        for wn in [w for w in cuda_w4mm.WARP_NS if w == 16 or bn in cuda_w4mm.BN_WARP32]:
            for bm in [t for t in ((32, 64) if m <= 64 else (64, 128)) if t <= cuda_w4mm.max_bm(bn, wn)]:
                ctas = math.ceil(n / bn) * math.ceil(m / bm)
                # split-K by slices (csrc/w4_mma.cu store_sliced) is cheap: 2 and 4 always, at least
                # two stages per slice
                splits = {sk for sk in (1, 2, 4, *_splits(ctas, k // 128, sms // 2)) if sk == 1 or sk <= k // 256}
                for sk in sorted(splits):
                    out += [KernelConfig(KernelName.CUDA_MM, block_n=bn, block_m=bm, warp_n=wn,
                                         split_k=sk, ring_stages=st) for st in (3, 4)]
    return out


def _wgmma_candidates(n: int, k: int, m: int, sms: int) -> list[KernelConfig]:
    """The warpgroup-MMA kernel (cuda_w4wg): one or two warpgroups (BN 64, 128), the token tiles that
    cover M without a mostly empty one, ring depths 3 and 4, split-K as _mma_candidates, the weights
    through the ring or (WREG) straight to registers. From M = 512
    (prefill) only the largest tile without split: run 9's M = 2048 sweep of every tile and split
    spent ~20 s of device time per shape, and the smaller tiles and splits lost on all three shapes."""
    out = []
    prefill = m >= 512
    for bn in cuda_w4wg.BNS:
        tiles = {cuda_w4wg.token_tile(m, bn, bm) for bm in cuda_w4wg.BMS}
        for bm in sorted(t for t in tiles if t <= max(m, cuda_w4wg.MIN_BM[bn]) or t == min(tiles)):
            if prefill and bm != max(tiles):
                continue
            ctas = math.ceil(n / bn) * math.ceil(m / bm)
            splits = {sk for sk in (1, 2, 4, *_splits(ctas, k // 128, sms // 2))
                      if sk == 1 or (sk <= k // 256 and not prefill)}
            for sk in sorted(splits):
                out += [KernelConfig(KernelName.CUDA_WG, block_n=bn, block_m=bm, split_k=sk, ring_stages=st,
                                     weight_registers=wreg or None) for st in (3, 4) for wreg in (False, True)]
    return out


#: the warp-specialized kernel's smallest M: its token tiles are 64, 128 and 256
WS_MIN_M = 64


def _ws_tile_worth_timing(m: int, bm: int, smallest: int) -> bool:
    """A warp-specialized kernel's token tile of BM at M: its last tile at least half full, or the smallest."""
    return (-m) % bm < bm // 2 or bm == smallest


def _ws_splits(m: int, wave: int) -> list[int]:
    """Split-K of 1, half the kernel's wave split and that split (the most slices one wave holds);
    prefill (M >= 512): 1."""
    return [1] if m >= 512 else sorted({1, max(1, wave // 2), wave})


def _ws_cluster(sk: int, most: int) -> tuple:
    """CLUSTER's values worth timing at split ``sk``: none at 1, the cluster sum too up to ``most``."""
    return (None,) if sk == 1 else (None, True) if sk <= most else (None,)


def _ws_candidates(n: int, k: int, m: int, sms: int, row_bytes: int = cuda_w4ws.ROW_BYTES) -> list[KernelConfig]:
    """The warp-specialized weight-only kernel (cuda_w4ws; cuda_w8ws at its ``row_bytes``): each tile
    worth timing, its two deepest rings, _ws_splits (at least eight 64-k stages a slice), each split > 1
    through global planes and (CLUSTER) in a cluster, and stream-K (STREAM) where it applies."""
    out = []
    smallest = min(bm for _, bm in cuda_w4ws.TILES)
    for bn, bm in cuda_w4ws.TILES:
        if not _ws_tile_worth_timing(m, bm, smallest):
            continue
        top = cuda_w4ws.max_stages(bn, bm, row_bytes)
        for sk in _ws_splits(m, cuda_w4ws.wave_split(n, k, m, bn, bm, sms)):
            out += [KernelConfig(KernelName.CUDA_WS, block_n=bn, block_m=bm, split_k=sk, ring_stages=st, cluster=cl)
                    for st in (top - 1, top) for cl in _ws_cluster(sk, cuda_w4ws.CLUSTER_MAX)
                    if not cl or cuda_w4ws.cluster_fits(bn, bm, st, row_bytes)]
        if stream_ctas(math.ceil(n / bn) * math.ceil(m / bm), k // 64, sms):  # stream-K: fewer tiles than SMs
            out += [KernelConfig(KernelName.CUDA_WS, block_n=bn, block_m=bm, ring_stages=st, stream_k=True)
                    for st in (top - 1, top)]
    return out


def _i8_ws_candidates(n: int, k: int, m: int, sms: int) -> list[KernelConfig]:
    """The warp-specialized int8 GEMM (cuda_i8ws): each token tile worth timing, its two deepest rings,
    _ws_splits, each split > 1 through global planes and (CLUSTER) in a cluster (no stream-K: run 34
    measured it 2-15 us behind the best split at every shape of W8A8 and FP8, M = 64 and 256)."""
    out = []
    kp = math.ceil(k / 16) * 16
    for bm in cuda_i8ws.TOKEN_TILES:
        if not _ws_tile_worth_timing(m, bm, min(cuda_i8ws.TOKEN_TILES)):
            continue
        top = cuda_i8ws.max_stages(bm)
        out += [KernelConfig(KernelName.CUDA_WS, block_n=cuda_i8ws.ROWS, block_m=bm, split_k=sk, ring_stages=st,
                             cluster=cl)
                for sk in _ws_splits(m, cuda_i8ws.wave_split(n, kp, m, bm, sms)) for st in (top - 1, top)
                for cl in _ws_cluster(sk, cuda_i8ws.CLUSTER_MAX)]
    return out


def _i8_candidates(n: int, k: int, m: int, sms: int, hopper: bool) -> list[KernelConfig]:
    out = [KernelConfig(KernelName.INT_MM)]
    if hopper and m >= WS_MIN_M:
        out += _i8_ws_candidates(n, k, m, sms)
    for bm, bn, bk, w, st in (_I8_SMALL if m <= 16 else _I8_LARGE):
        bm = min(bm, max(16, 1 << (m - 1).bit_length()))
        blocks = math.ceil(n / bn) * math.ceil(m / bm)
        for s in (_splits(blocks, math.ceil(k / bk), sms) if m <= 64 else [1]):
            out.append(KernelConfig(KernelName.TRITON, block_m=bm, block_n=bn, block_k=bk, group_m=8, split_k=s,
                                    num_warps=w, num_stages=st))
    return out


def _tc_small(setup: str, n: int, k: int, m: int, ks: int, sms: int) -> list[KernelConfig]:
    """Tensor-core decode (M <= 64)."""
    bm = max(16, 1 << (m - 1).bit_length())
    out = []
    for bn, bk, w, st in _TC_SMALL:
        for s in _splits(math.ceil(n / bn) * math.ceil(m / bm), math.ceil(k / max(bk, ks)), sms):
            out.append(KernelConfig(KernelName.TC, block_n=bn, block_m=bm, block_k=bk, split_k=s, num_warps=w,
                                    num_stages=st))
    if ks >= 64 and setup not in ("fp8_upcast", "nvfp4"):  # eight (four) plane dots instead of the re-interleave
        bn, bk, w, st = _TC_SMALL[0]
        s = _splits(math.ceil(n / bn) * math.ceil(m / bm), math.ceil(k / max(bk, ks)), sms)[0]
        out.append(KernelConfig(KernelName.TC, block_n=bn, block_m=bm, block_k=bk, split_k=s, num_warps=w,
                                num_stages=st, planes=True))
    return out


def _tc_large(n: int, m: int, sms: int) -> list[KernelConfig]:
    """Tensor cores on the packed layout (prefill)."""
    out = []
    for bn, bm, bk, w, st in _TC_LARGE:
        blocks = math.ceil(n / bn) * math.ceil(m / bm)
        for s in ([1, 2] if blocks < sms else [1]):
            out.append(KernelConfig(KernelName.TC, block_n=bn, block_m=bm, block_k=bk, split_k=s, num_warps=w,
                                    num_stages=st))
    return out


def _m_class(m: int) -> int:
    return 1 if m == 1 else (16 if m % 16 == 0 else 0)


def compile_key(setup: str, m: int, cfg: KernelConfig) -> tuple:
    """Configs that compile to the same binaries: SPLIT_K only matters as 1, or more (ATOMIC)."""
    if cfg.split_k is not None:
        cfg = dataclasses.replace(cfg, split_k=min(cfg.split_k, 2))
    return setup, _m_class(m), cfg


def _compile_task(task: tuple) -> str:
    """Worker: run one config once on dummy tensors of the real shapes (fills Triton's disk cache)."""
    setup, shape, m, cfg = task
    from turbopack.formats import get_format
    from turbopack.inference.kernels.dispatch import FAMILIES
    from turbopack.layouts import get_layout

    layout_name, params = SETUPS[setup]
    fmt = get_format("fp8" if setup.startswith("fp8") else setup, **params)
    layout = get_layout(layout_name)
    packed = {}
    for spec in layout.packed_specs(fmt, shape):
        t = torch.zeros(spec.shape, dtype=torch.uint8 if spec.dtype.itemsize == 1 else spec.dtype, device="cuda")
        packed[spec.suffix] = t.view(spec.dtype) if spec.dtype.itemsize == 1 else t
    x = torch.randn(m, shape[1], device="cuda", dtype=torch.bfloat16)
    try:
        FAMILIES.get(layout_name).run(x, packed, shape, None, cfg, None, fmt)
        torch.cuda.synchronize()
        return ""
    except Exception as e:  # reported, and the timing pass skips the config
        return f"{setup} M={m} {cfg}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"


def precompile(tasks: list[tuple], jobs: int) -> list[str]:
    """Compile every distinct (setup, M class, config) in ``jobs`` processes; returns the errors."""
    seen: dict[tuple, tuple] = {}
    for setup, shape, m, cfg in tasks:
        seen.setdefault(compile_key(setup, m, cfg), (setup, shape, m, cfg))
    todo = list(seen.values())
    print(f"precompiling {len(todo)} kernel variants in {jobs} processes", file=sys.stderr, flush=True)
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.expanduser("~/.triton/cache"))
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        return [e for e in pool.map(_compile_task, todo, chunksize=1) if e]
