"""The CUDA C++ W4A16 kernel for 16 < M <= 128 (csrc/w4_mma.cu, cuda_w4mm): on a GPU it matches the
float64 reference of the w4a16 contract on fresh random inputs. Its A operand is the contract's
16-bit weight bit for bit and the sums are fp32, so what is left is fp32 summation order and the
16-bit rounding of y: tolerance 4e-3 relative (Frobenius) for bf16 y (its rounding alone is ~1.1e-3),
1e-3 for fp16 (~1.4e-4). One-hot activations make y a copy of single weights, which must equal the
contract's 16-bit weights exactly (any fragment, permutation or scale-slot error shows). The CPU
tests cover a model of the kernel's copies and fragment reads (below), the config keys, the tuner's
candidates and the host's token-tile rule; the compile
check for sm_80/sm_90a/Blackwell is test_cuda_build.test_kernels_compile_without_spills."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from turbopack.inference.kernels import cuda_w4mm, tune
from turbopack.inference.kernels.config import KernelConfig, KernelName

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
TOL = {torch.bfloat16: 4e-3, torch.float16: 1e-3}
#: (BN, BM, WARP_N, STAGES, SPLIT_K) cycled over the cases: every instance (BN x token tile x warp
#: rows; BN = 256 and WARP_N = 32 cap BM at 64; WARP_N = 32 is built for BN = 128 only), every ring
#: depth, split 1, auto (0), uneven (4 over K = 1152: 9 stages, the last CTA one stage) and one stage
#: per CTA (9)
CONFIGS = [(64, 32, 16, 3, 1), (128, 64, 16, 4, 0), (64, 128, 16, 5, 4), (128, 128, 16, 3, 9), (128, 32, 16, 4, 2),
           (64, 64, 16, 4, 0), (256, 64, 16, 4, 2), (256, 128, 16, 3, 1), (256, 32, 16, 5, 0),
           (128, 32, 32, 4, 2), (128, 64, 32, 3, 1), (128, 32, 32, 5, 9), (128, 64, 32, 4, 4), (128, 64, 32, 5, 0)]


def _weight(n, k, group, sym, dtype, seed):
    from turbopack.formats import get_format
    from turbopack.inference.kernels import reference

    torch.manual_seed(seed)
    fmt = get_format("w4a16", group_size=group, sym=sym, scale_dtype=str(dtype).removeprefix("torch."))
    q = fmt.quantize(torch.randn(n, k, device="cuda"))
    return fmt, q, reference


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("m", [17, 32, 33, 64, 100, 128])
@pytest.mark.parametrize("group,sym", [(128, False), (128, True), (64, False), (64, True)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matches_reference(m, group, sym, dtype):
    n, k = 1024 + 48, 1152   # N: a partial 64-row tile and a partial 128-row CTA; K: 9 stages
    fmt, q, reference = _weight(n, k, group, sym, dtype, 100 * m + group + sym)
    case = m + group + sym
    for i, tile_n in enumerate((64, 16)):
        bn, bm, wn, stages, split = CONFIGS[(case + 3 * i) % len(CONFIGS)]
        packed = reference.pack_w4(q, tile_n)
        x = torch.randn(m, k, device="cuda").to(dtype)
        b = torch.randn(n, device="cuda").to(dtype) if tile_n == 64 else None
        out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
        assert cuda_w4mm.supports(x, fmt, packed, (n, k))
        cuda_w4mm.w4_mma(x, packed, (n, k), b, out, group=group, bn=bn, bm=bm, warp_n=wn, stages=stages,
                         split_k=split)
        err = reference.rel_err(out, reference.ref_linear(x, "w4a16", q, b))
        assert err < TOL[dtype], f"tile_n={tile_n} BN={bn} BM={bm} WARP_N={wn} stages={stages} split={split}: {err:.2e}"


@pytest.mark.gpu
@gpu
def test_every_config_case_runs():
    """CONFIGS as test_matches_reference cycles them covers a subset per (m, group, sym); here each
    entry runs at M = 100 and 33 (two token tiles of 64, one of 64 over 33 tokens), bf16, twice:
    the second call must give the same bits (split-K by slices is deterministic)."""
    n, k = 1024 + 48, 1152
    fmt, q, reference = _weight(n, k, 128, False, torch.bfloat16, 7)
    packed = reference.pack_w4(q, 64)
    for m in (100, 33):
        x = torch.randn(m, k, device="cuda").bfloat16()
        ref = reference.ref_linear(x, "w4a16", q)
        for bn, bm, wn, stages, split in CONFIGS:
            y = cuda_w4mm.w4_mma(x, packed, (n, k), None, group=128, bn=bn, bm=bm, warp_n=wn, stages=stages,
                                 split_k=split)
            err = reference.rel_err(y, ref)
            assert err < TOL[torch.bfloat16], f"M={m} BN={bn} BM={bm} WARP_N={wn} stages={stages} split={split}"
            # split-K sums its slices in slice order, whichever CTA arrives last: the same bits every call
            again = cuda_w4mm.w4_mma(x, packed, (n, k), None, group=128, bn=bn, bm=bm, warp_n=wn, stages=stages,
                                     split_k=split)
            assert torch.equal(y, again), f"M={m} BN={bn} BM={bm} WARP_N={wn} split={split}: not deterministic"


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("group,sym", [(128, False), (64, True)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bn,bm,wn,split", [(64, 128, 16, 1), (128, 64, 16, 3), (256, 64, 16, 2), (128, 32, 32, 1),
                                           (128, 64, 32, 3)])
def test_one_hot_tokens_read_the_contract_weights_exactly(group, sym, dtype, bn, bm, wn, split):
    """Token t is the unit vector at k_t, so y[t] = W16[:, k_t] with one nonzero product per sum:
    exact in fp32 and in the 16-bit store. 128 tokens at k spread over every tile, quad lane,
    step and group."""
    n, k = 512 + 16, 1024
    fmt, q, reference = _weight(n, k, group, sym, dtype, 5 + group)
    w16 = reference.w4_weight16(q, dtype)
    ks = torch.randperm(k, device="cuda")[:128]
    x = torch.zeros(128, k, device="cuda", dtype=dtype)
    x[torch.arange(128, device="cuda"), ks] = 1
    for tile_n in (64, 16):
        packed = reference.pack_w4(q, tile_n)
        y = cuda_w4mm.w4_mma(x, packed, (n, k), None, group=group, bn=bn, bm=bm, warp_n=wn, stages=4,
                             split_k=split)
        assert torch.equal(y, w16[:, ks].T), f"tile_n={tile_n}"


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("m", [24, 200, 256])
def test_through_dispatch_and_token_tiles(m):
    """dispatch.linear runs the kernel from a cuda_mm config (M = 200, 256: several token tiles with
    split-K, the counters per (row tile, token tile)); a CUDA graph replays it."""
    from turbopack.inference.kernels.dispatch import linear

    n, k = 2048, 2048
    fmt, q, reference = _weight(n, k, 128, False, torch.bfloat16, m)
    packed = reference.pack_w4(q, 64)
    x = torch.randn(m, k, device="cuda").bfloat16()
    cfg = KernelConfig(KernelName.CUDA_MM, block_n=128, block_m=64, warp_n=32 if m == 24 else 16, split_k=2,
                       ring_stages=4)
    y = linear(x, fmt, "w4_t64x64", packed, (n, k), None, cfg)
    ref = reference.ref_linear(x, "w4a16", q)
    assert reference.rel_err(y, ref) < TOL[torch.bfloat16]
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y2 = linear(x, fmt, "w4_t64x64", packed, (n, k), None, cfg)
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    assert reference.rel_err(y2, reference.ref_linear(x, "w4a16", q)) < TOL[torch.bfloat16]


def test_config_keys_round_trip():
    d = {"kernel": "cuda_mm", "BN": 128, "BM": 64, "WARP_N": 32, "SPLIT_K": 2, "STAGES": 4}
    cfg = KernelConfig.from_json(d, "test")
    assert cfg == KernelConfig(KernelName.CUDA_MM, block_n=128, block_m=64, warp_n=32, split_k=2, ring_stages=4)
    assert cfg.to_json() == d
    old = {"kernel": "cuda_mm", "BN": 128, "BM": 64, "SPLIT_K": 2, "STAGES": 4}  # before run 8: 16-row warps
    assert KernelConfig.from_json(old, "test").to_json() == old


def test_tuner_offers_it_for_the_64_and_256_buckets_only():
    for m, n, k in ((64, 28672, 4096), (256, 4096, 14336), (32, 4096, 4096)):
        cands = [c for c in tune.candidates("w4a16", n, k, m, 132) if c.kernel is KernelName.CUDA_MM]
        assert cands, m
        assert {c.block_n for c in cands} <= set(cuda_w4mm.BNS)
        assert {c.block_m for c in cands} <= set(cuda_w4mm.BMS)
        assert {c.warp_n for c in cands} == set(cuda_w4mm.WARP_NS)
        assert all(c.warp_n == 16 or c.block_n in cuda_w4mm.BN_WARP32 for c in cands)
        assert all(c.block_m <= cuda_w4mm.max_bm(c.block_n, c.warp_n) for c in cands)
        assert {c.ring_stages for c in cands} <= set(cuda_w4mm.STAGES)
        assert all(1 <= c.split_k <= k // 128 for c in cands)
    for m in (1, 16, 2048):
        assert not [c for c in tune.candidates("w4a16", 4096, 4096, m, 132) if c.kernel is KernelName.CUDA_MM]
    assert not [c for c in tune.candidates("nvfp4", 4096, 4096, 64, 132) if c.kernel is KernelName.CUDA_MM]


def test_token_tile_is_the_smallest_cover_capped_by_bm():
    """csrc/w4_mma.cu by_bm: the tile the launcher picks (the host sizes the split-K counters by it)."""
    want = {(17, 128): 32, (32, 64): 32, (33, 128): 64, (64, 128): 64, (65, 128): 128, (100, 64): 64,
            (256, 32): 32, (256, 128): 128, (1, 64): 32}
    assert {key: cuda_w4mm.token_tile(*key) for key in want} == want


# -- a CPU model of the kernel's data movement ------------------------------------------------------

def _u4(buf: np.ndarray, i: int) -> np.ndarray:
    return buf[16 * i: 16 * i + 16]


def _model_slot(a: dict, bx: int, by: int, s: int) -> np.ndarray:
    """The bytes of one ring slot after stage s's copies, every thread's cp.async by csrc/w4_mma.cu's
    formulas (Feed::init/issue; the pointer increments there are these closed forms per stage). "warps"
    counts 16-row fragments (WARP_N = 32: two per warp, fragment r of warp w at 2w + r, its sources
    fragment 0's plus a fixed offset); the x copies are spread over the CTA's real threads."""
    warps, bmt, tn_, kt, kgp, g_ = a["warps"], a["bmt"], a["TN"], a["KT"], a["KGP"], a["G"]
    kw, ksz = warps * 64, warps * 6
    slot = np.zeros((kw + ksz + bmt * 17) * 16, np.uint8)
    for tid in range(warps * 32):  # one (fragment, lane) at a time: the weight and scale copies
        warp, lane = tid >> 5, tid & 31
        n0 = by * warps * 16 + warp * 16
        active = n0 < a["NP"]
        tn, r0 = (n0 // tn_, n0 % tn_) if active else (0, 0)
        if active:
            src = ((tn * kt + 2 * s) * tn_ + r0) * 2 + lane
            _u4(slot, warp * 64 + lane)[:] = _u4(a["qb"], src)
            _u4(slot, warp * 64 + 32 + lane)[:] = _u4(a["qb"], src + tn_ * 2)
            j = lane >> 1 if lane < 4 else lane - 4
            grp = tn * kgp + (2 * s + j if g_ == 64 else s)
            dst = (kw + warp * 6 + lane) * 16
            if lane < 4:
                e = grp * tn_ + r0 + 8 * (lane & 1)
                slot[dst: dst + 16] = a["sb"][2 * e: 2 * e + 16]
            elif lane < 6 and a["zb"] is not None:
                e = grp * tn_ + r0
                slot[dst: dst + 16] = a["zb"][e: e + 16]
    threads = warps * 32 // a["frags_per_warp"]
    for tid in range(threads):
        xrow, xch = tid >> 4, tid & 15
        for p in range(bmt // (threads // 16)):
            row = xrow + p * (threads // 16)
            tok = min(bx * bmt + row, a["M"] - 1)
            e = tok * a["K"] + s * 128 + 8 * xch
            _u4(slot, kw + ksz + row * 17 + xch)[:] = a["xb"][2 * e: 2 * e + 16]
    return slot


def _bf16(b: np.ndarray) -> np.ndarray:  # little-endian bf16 bytes -> float64
    return (b.view(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def _model_mma(acc: np.ndarray, slot: np.ndarray, a: dict, warp: int) -> None:
    """slot_mma for one warp: each lane's fragment reads, assembled into mma.m16n8k16's A (16 x 16) and
    B (16 x 8) by the PTX ISA's fragment layout (a0: A[g][2c, 2c+1], a1: row g+8, a2: A[g][2c+8, 2c+9],
    a3: row g+8; b0: B[2c, 2c+1][g], b1: B[2c+8, 2c+9][g]); acc [BM/8, 16, 8] in float64."""
    kw, ksz = a["warps"] * 64, a["warps"] * 6
    lanes = np.arange(32)
    g, c = lanes >> 2, lanes & 3
    for j in range(2):
        sz = (kw + warp * 6) * 16
        s = [_bf16(slot[sz + 32 * j: sz + 32 * j + 32])[rows] for rows in (g, g + 8)]
        z = [slot[sz + 64 + 16 * j + rows].astype(np.float64) if a["zb"] is not None else 8.0 for rows in (g, g + 8)]
        w = slot[(warp * 64 + 32 * j) * 16:][:512].view(np.uint32).reshape(16, 8)  # row, word
        for h in range(2):
            words = [w[g, 2 * c + h], w[g + 8, 2 * c + h]]
            for u in range(2):
                a_mat = np.zeros((16, 16))
                for reg, (r, sh) in enumerate(((0, 8 * u), (1, 8 * u), (0, 8 * u + 4), (1, 8 * u + 4))):
                    q = np.stack([(words[r] >> sh) & 15, (words[r] >> (sh + 16)) & 15], 1).astype(np.float64)
                    v = torch.from_numpy((q - np.asarray(z[r])[..., None] * np.ones(2)) * s[r][:, None])
                    v = v.to(torch.bfloat16).double().numpy()  # the HMUL2's one rounding
                    rows, col = g + 8 * (reg & 1), 2 * c + 8 * (reg >> 1)
                    a_mat[rows, col], a_mat[rows, col + 1] = v[:, 0], v[:, 1]
                for nb in range(acc.shape[0]):
                    xb = kw + ksz + (nb * 8 + g) * 17 + 8 * j + 2 * c + h
                    xv = np.stack([_bf16(_u4(slot, i)) for i in xb])  # [lane, 8]
                    b_mat = np.zeros((16, 8))
                    for reg in range(2):
                        pair = xv[:, 4 * u + 2 * reg: 4 * u + 2 * reg + 2]
                        b_mat[2 * c + 8 * reg, g], b_mat[2 * c + 8 * reg + 1, g] = pair[:, 0], pair[:, 1]
                    acc[nb] += a_mat @ b_mat


@pytest.mark.parametrize("group,sym,tile_n,bn,bm,wn,split", [
    (64, False, 16, 64, 32, 16, 2), (128, True, 64, 128, 64, 16, 1), (128, False, 64, 256, 64, 16, 3),
    (64, True, 16, 128, 32, 32, 1), (128, False, 64, 128, 64, 32, 2)])
def test_model_of_the_copies_and_fragments_matches_the_reference(group, sym, tile_n, bn, bm, wn, split):
    """The kernel's index math on the CPU: slots filled by its copy formulas, fragments read by its
    formulas and multiplied in mma's layout give x W16^T to fp64 rounding; a wrong offset, pairing
    or permutation gives O(1) errors. (The kernel itself: the GPU tests above.)"""
    from turbopack.formats import get_format
    from turbopack.inference.kernels import reference

    torch.manual_seed(group + tile_n)
    n, k, m = 80, 256, 40   # partial row tiles, two token tiles (one partial), two stages
    fmt = get_format("w4a16", group_size=group, sym=sym, scale_dtype="bfloat16")
    q = fmt.quantize(torch.randn(n, k))
    packed = reference.pack_w4(q, tile_n)
    x = torch.randn(m, k).bfloat16()
    qw = packed["qweight"]
    warps, bmt = bn // 16, cuda_w4mm.token_tile(m, bm)
    a = {"warps": warps, "frags_per_warp": wn // 16, "bmt": bmt, "TN": qw.shape[2], "KT": qw.shape[1],
         "KGP": packed["scales"].shape[1],
         "G": group, "NP": qw.shape[0] * qw.shape[2], "M": m, "K": k,
         "qb": qw.contiguous().view(torch.uint8).flatten().numpy(),
         "sb": packed["scales"].contiguous().view(torch.uint8).flatten().numpy(),
         "zb": packed["zeros"].flatten().numpy() if "zeros" in packed else None,
         "xb": x.contiguous().view(torch.uint8).flatten().numpy()}
    y = np.zeros((m, n))
    stages, per = k // 128, -(-(k // 128) // split)
    for bx in range(-(-m // bmt)):
        for by in range(-(-a["NP"] // bn)):
            for zi in range(split):
                acc = np.zeros((warps, bmt // 8, 16, 8))
                for s in range(min(stages, zi * per), min(stages, zi * per + per)):
                    slot = _model_slot(a, bx, by, s)
                    for warp in range(warps):
                        _model_mma(acc[warp], slot, a, warp)
                for warp in range(warps):
                    for nb in range(bmt // 8):
                        for r in range(16):
                            row = by * bn + warp * 16 + r
                            toks = bx * bmt + nb * 8 + np.arange(8)
                            ok = toks < m
                            if row < n:
                                y[toks[ok], row] += acc[warp, nb, r, ok]
    ref = reference.ref_linear(x, "w4a16", q).double()
    assert reference.rel_err(torch.from_numpy(y), ref) < 1e-6
