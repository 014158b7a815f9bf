"""The CUDA C++ W4A16 kernel on Hopper's warpgroup MMA (csrc/w4_wgmma.cu, cuda_w4wg): on an sm90 GPU it
matches the float64 reference of the w4a16 contract on fresh random inputs, with w4_mma.cu's
tolerances (the same A operand, the contract's 16-bit weight bit for bit, fp32 sums: 4e-3 relative
for bf16 y, 1e-3 for fp16), and one-hot tokens read the contract's weights exactly (any error in
x's permutation into the weights' K order, in the swizzle or in a descriptor shows), with the
weights through the shared-memory ring and (WREG) straight to registers. The CPU tests model x's
stores and wgmma's B reads (the 128-byte swizzle as the PTX ISA defines it) against the A fragment's
K order and WREG's weight loads against the ring's, and cover the config keys, the tuner's
candidates and the token-tile rule; the
compile check for sm_80/sm_90a/Blackwell is test_cuda_build.test_kernels_compile_without_spills."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from wgmma_cases import TOL, a_fragment_k, hopper, reference_cases, w4_weight, wgmma_b

from turbopack.inference.kernels import cuda_w4wg, tune
from turbopack.inference.kernels.config import KernelConfig, KernelName

#: (BN, BM, STAGES, SPLIT_K) cycled over the cases: every instance (one or two warpgroups x token
#: tile), every ring depth, split 1, auto (0), uneven (4 over K = 1152: 9 stages) and one stage per CTA (9)
CONFIGS = [(64, 32, 3, 1), (128, 64, 4, 0), (64, 128, 5, 4), (128, 128, 3, 9), (64, 64, 4, 2), (128, 64, 5, 1),
           (64, 32, 4, 9), (128, 128, 4, 0)]


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("m", [17, 32, 33, 64, 100, 128, 300])
@pytest.mark.parametrize("group,sym", [(128, False), (128, True), (64, False), (64, True)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matches_reference(m, group, sym, dtype):
    from turbopack.inference.kernels import reference

    for fmt, (bn, bm, stages, split), packed, x, b, out, want in reference_cases(m, group, sym, dtype, CONFIGS):
        n, k = out.shape[1], x.shape[1]
        assert cuda_w4wg.supports(x, fmt, packed, (n, k))
        for wreg in (False, True):
            cuda_w4wg.w4_wgmma(x, packed, (n, k), b, out, group=group, bn=bn, bm=bm, stages=stages, split_k=split,
                               wreg=wreg)
            err = reference.rel_err(out, want)
            assert err < TOL[dtype], f"{packed['qweight'].shape} BN={bn} BM={bm} {stages=} {split=} {wreg=}: {err:.2e}"
            out.fill_(float("nan"))


@pytest.mark.gpu
@hopper
def test_every_config_runs_deterministically():
    """Each CONFIGS entry at M = 100 and 33, bf16, twice: the same bits both calls (split-K by slices)."""
    from turbopack.inference.kernels import reference

    n, k = 1024 + 48, 1152
    fmt, q = w4_weight(n, k, 128, False, torch.bfloat16, 7)
    packed = reference.pack_w4(q, 64)
    for m in (100, 33):
        x = torch.randn(m, k, device="cuda").bfloat16()
        ref = reference.ref_linear(x, "w4a16", q)
        for (bn, bm, stages, split), wreg in itertools.product(CONFIGS, (False, True)):
            kw = dict(group=128, bn=bn, bm=bm, stages=stages, split_k=split, wreg=wreg)
            y = cuda_w4wg.w4_wgmma(x, packed, (n, k), None, **kw)
            assert reference.rel_err(y, ref) < TOL[torch.bfloat16], f"M={m} {kw}"
            assert torch.equal(y, cuda_w4wg.w4_wgmma(x, packed, (n, k), None, **kw)), f"M={m} {kw}: not deterministic"


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("group,sym", [(128, False), (64, True)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bn,bm,split", [(64, 128, 1), (128, 64, 3), (64, 32, 2), (128, 128, 1)])
def test_one_hot_tokens_read_the_contract_weights_exactly(group, sym, dtype, bn, bm, split):
    """Token t is the unit vector at k_t, so y[t] = W16[:, k_t] with one nonzero product per sum:
    exact in fp32 and in the 16-bit store. 128 tokens at k spread over every tile, quad lane,
    step, swizzle row and group."""
    from turbopack.inference.kernels import reference

    n, k = 512 + 16, 1024
    fmt, q = w4_weight(n, k, group, sym, dtype, 5 + group)
    w16 = reference.w4_weight16(q, dtype)
    ks = torch.randperm(k, device="cuda")[:128]
    x = torch.zeros(128, k, device="cuda", dtype=dtype)
    x[torch.arange(128, device="cuda"), ks] = 1
    for tile_n, wreg in itertools.product((64, 16), (False, True)):
        packed = reference.pack_w4(q, tile_n)
        y = cuda_w4wg.w4_wgmma(x, packed, (n, k), None, group=group, bn=bn, bm=bm, stages=4, split_k=split, wreg=wreg)
        assert torch.equal(y, w16[:, ks].T), f"tile_n={tile_n} wreg={wreg}"


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("m", [48, 256])
def test_through_dispatch_and_a_graph(m):
    """dispatch.linear runs the kernel from a cuda_wg config (M = 256 with WREG); a CUDA graph replays it."""
    from turbopack.inference.kernels import reference
    from turbopack.inference.kernels.dispatch import linear

    n, k = 2048, 2048
    fmt, q = w4_weight(n, k, 128, False, torch.bfloat16, m)
    packed = reference.pack_w4(q, 64)
    x = torch.randn(m, k, device="cuda").bfloat16()
    cfg = KernelConfig(KernelName.CUDA_WG, block_n=128, block_m=64, split_k=2, ring_stages=4,
                       weight_registers=m == 256 or None)
    y = linear(x, fmt, "w4_t64x64", packed, (n, k), None, cfg)
    assert reference.rel_err(y, reference.ref_linear(x, "w4a16", q)) < TOL[torch.bfloat16]
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y2 = linear(x, fmt, "w4_t64x64", packed, (n, k), None, cfg)
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    assert reference.rel_err(y2, reference.ref_linear(x, "w4a16", q)) < TOL[torch.bfloat16]


def test_config_keys_round_trip():
    d = {"kernel": "cuda_wg", "BN": 128, "BM": 64, "SPLIT_K": 2, "STAGES": 4, "WREG": True}
    cfg = KernelConfig.from_json(d, "test")
    assert cfg == KernelConfig(KernelName.CUDA_WG, block_n=128, block_m=64, split_k=2, ring_stages=4,
                               weight_registers=True)
    assert cfg.to_json() == d


def test_tuner_offers_it_on_hopper_only_from_m_17():
    for m, n, k in ((32, 4096, 4096), (64, 28672, 4096), (256, 4096, 14336), (2048, 6144, 4096)):
        cands = [c for c in tune.candidates("w4a16", n, k, m, 132, hopper=True) if c.kernel is KernelName.CUDA_WG]
        assert cands, m
        assert {c.block_n for c in cands} == set(cuda_w4wg.BNS)
        assert all(c.block_m == cuda_w4wg.token_tile(m, c.block_n, c.block_m) for c in cands)
        assert {c.ring_stages for c in cands} <= set(cuda_w4wg.STAGES)
        assert all(1 <= c.split_k <= k // 128 for c in cands)
        assert {c.weight_registers for c in cands} == {None, True}
        assert not [c for c in tune.candidates("w4a16", n, k, m, 132, hopper=False) if c.kernel is KernelName.CUDA_WG]
        if m >= 512:  # prefill: the largest tile, no split
            assert {(c.block_m, c.split_k) for c in cands} == {(128, 1)}
    assert not [c for c in tune.candidates("w4a16", 4096, 4096, 16, 132, hopper=True)
                if c.kernel is KernelName.CUDA_WG]


def test_token_tile_is_the_smallest_cover_capped_by_bm():
    """csrc/w4_wgmma.cu by_bm: the tile the launcher picks (the host sizes the split-K counters by it);
    two warpgroups take at least 64 tokens."""
    want = {(17, 64, 128): 32, (17, 128, 128): 64, (32, 64, 64): 32, (33, 64, 128): 64, (64, 128, 32): 64,
            (65, 64, 128): 128, (100, 128, 64): 64, (256, 64, 32): 32, (256, 128, 128): 128, (1, 64, 64): 32}
    assert {key: cuda_w4wg.token_tile(*key) for key in want} == want


# -- a CPU model of x's path: the kernel's stores, the tensor core's reads -----------------------------

def _store_model(x: np.ndarray, bm: int, wg: int) -> np.ndarray:
    """One stage's x bytes in a slot ([2 chunks][BM rows][128 B] from the 1024-aligned base) as
    XFeed::load/store write them, thread by thread: unit (p, t, j), logical chunks 2i + p of token t's
    64-k chunk j, physical chunk 4p + m = word m of each, at row t, chunk (4p + m) ^ (t & 7)."""
    words = x.view(np.uint32).reshape(x.shape[0], 2, 8, 4)  # token, 64-k chunk, 16-byte chunk, word
    smem = np.zeros((2 * bm * 128) // 4, np.uint32)
    units = bm // (32 * wg)
    for tid in range(128 * wg):
        for u in range(units):
            uid = tid + u * 128 * wg
            p, t, j = uid & 1, (uid >> 1) & (bm - 1), uid // (2 * bm)
            regs = [words[t, j, 2 * i + p] for i in range(4)]
            for m in range(4):
                at = (j * bm + t) * 128 + (((4 * p + m) ^ (t & 7)) << 4)
                smem[at // 4: at // 4 + 4] = [regs[i][m] for i in range(4)]
    return smem.view(np.uint16)


@pytest.mark.parametrize("bm,wg", [(32, 1), (64, 1), (64, 2), (128, 1), (128, 2)])
def test_model_x_reaches_the_tensor_core_in_the_weights_k_order(bm, wg):
    """wgmma step u of 64-k chunk j (descriptor start 32u bytes into the chunk) must see, at virtual k
    kk, the x element that the A fragment's thread holds there: kk = 2c + e -> logical 16c + 4u + e,
    kk = 8 + 2c + e -> 16c + 4u + 2 + e (w4_mma.cuh decode_af; mma's A fragment k columns 2c, 2c + 8)."""
    rng = np.random.default_rng(bm + wg)
    x = rng.integers(0, 1 << 16, size=(bm, 128), dtype=np.uint16)
    smem = _store_model(x, bm, wg)
    for j in range(2):
        for u in range(4):
            b = wgmma_b(smem, j * bm * 128 + 32 * u, bm)
            want = x[:, 64 * j + a_fragment_k(u)].T
            assert np.array_equal(b, want), (j, u)


def test_model_x_stores_are_conflict_free():
    """Each STS.128 phase (8 lanes) hits 8 distinct 16-byte bank groups: lanes hold p = 0, 1 of four
    consecutive tokens, and the swizzle's XOR spreads them."""
    for bm, wg in ((32, 1), (64, 2), (128, 1)):
        for m in range(4):
            for phase in range(0, 128 * wg, 8):
                groups = set()
                for tid in range(phase, phase + 8):
                    p, t = tid & 1, (tid >> 1) & (bm - 1)
                    groups.add(((4 * p + m) ^ (t & 7)) % 8)
                assert len(groups) == 8, (bm, wg, m, phase)


# -- a CPU model of WREG's weight loads against the ring's copies and decode_af's reads ---------------

def _ring_bytes(tn_rows: int, kt: int, n0: int, s: int, j: int, g: int, c: int, e: int) -> int:
    """Byte offset in qweight of the 8 bytes decode_af reads for row g + 8e, tile j of stage s, thread
    (g, c): WeightFeed::init/issue copy lane l's 16-byte chunk l of the fragment's 512 bytes of tile j
    (uint4 ((tn KT + 2 s) TN + r0) 2 + j TN 2 + l) to chunk l of the slot; decode_af reads 32-bit word
    (row 4 + c) 2 + h of it, h = 0, 1 (row = g + 8e)."""
    tn, r0 = n0 // tn_rows, n0 % tn_rows
    chunk0 = ((tn * kt + 2 * s) * tn_rows + r0) * 2 + j * tn_rows * 2
    word = ((g + 8 * e) * 4 + c) * 2
    return chunk0 * 16 + word * 4


def _wreg_bytes(tn_rows: int, kt: int, n0: int, s: int, j: int, g: int, c: int, e: int) -> int:
    """The same from WeightRegs (w4_wgmma.cu): src = uint2 ((tn KT + 2 s_lo) TN + r0 + g) 4 + c, + 2 tile_step
    per stage, + j tile_step (TN x 4) for the tile, + 32 e for row g + 8e."""
    tn, r0 = n0 // tn_rows, n0 % tn_rows
    src = ((tn * kt + 2 * 0) * tn_rows + r0 + g) * 4 + c
    step = tn_rows * 4
    return (src + s * 2 * step + j * step + 32 * e) * 8


@pytest.mark.parametrize("tn_rows", [16, 64])
def test_model_wreg_loads_the_words_the_ring_path_decodes(tn_rows):
    """For every fragment of a weight (N = 4 x 64 + 48 rows), stage, tile, thread and row half, WREG's
    LDG.64 reads the bytes that the ring's copy puts where decode_af reads them; a warp's loads of one
    row half are 256 contiguous bytes (coalesced)."""
    n_pad, k = 4 * 64 + 48, 512
    kt = k // 64
    for n0 in range(0, n_pad, 16):
        for s in range(kt // 2):
            for j, e in itertools.product((0, 1), (0, 1)):
                warp = [_wreg_bytes(tn_rows, kt, n0, s, j, g, c, e) for g in range(8) for c in range(4)]
                assert warp == [_ring_bytes(tn_rows, kt, n0, s, j, g, c, e) for g in range(8) for c in range(4)]
                assert warp == list(range(warp[0], warp[0] + 256, 8)) and warp[0] % 256 == 0
