"""The warp-specialized CUDA C++ W4A16 kernel on Hopper (csrc/w4_wgws.cu, cuda_w4ws): on an sm90 GPU it
matches the float64 reference of the w4a16 contract on fresh random inputs with w4_wgmma.cu's
tolerances (the same A operand and decode, fp32 sums: 4e-3 relative for bf16 y, 1e-3 for fp16), one-hot
tokens read the contract's weights exactly (an error in the A fragments' gather, in x's box, in a
bulk copy's offset or in the stage ring shows), split-K sums are deterministic, and a CUDA graph
replays it. On the CPU: models of x's box read back through wgmma's B addressing and of the A
fragments' gather from the packed layout (both natural k order), the tile and split rules."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from wgmma_cases import TOL, hopper, prmt, reference_cases, replayed_in_a_graph, w4_weight, wgmma_b

from turbopack.inference.kernels import cuda_w4ws, tune
from turbopack.inference.kernels.config import KernelConfig, KernelName

#: (BN, BM, STAGES, SPLIT_K, CLUSTER) cycled over the cases: every tile, ring depths 3 to the deepest, split 1, auto
#: (0), uneven (4 over K = 1152: 18 stages) and more slices than a CTA's share of stages (18: one each),
#: the slices summed through global planes and (CLUSTER) in a cluster (18 there: CLUSTER_MAX = 8)
CONFIGS = [(128, 256, 4, 1, False), (128, 128, 3, 0, False), (256, 64, 13, 4, True), (128, 256, 6, 18, True),
           (256, 64, 4, 1, False), (128, 128, 10, 3, True), (256, 64, 3, 0, False), (128, 128, 5, 2, False),
           (256, 64, 5, 7, True), (128, 256, 5, 18, False), (128, 64, 17, 1, False), (128, 64, 4, 3, True),
           (128, 64, 3, 0, False)]


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("m", [17, 64, 128, 200, 256, 300])
@pytest.mark.parametrize("group,sym", [(128, False), (128, True), (64, False), (64, True)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matches_reference(m, group, sym, dtype):
    from turbopack.inference.kernels import reference

    # N = 1072: a partial 128- and 256-row CTA; K = 1152: 18 stages
    for fmt, (bn, bm, stages, split, cl), packed, x, b, out, want in reference_cases(m, group, sym, dtype, CONFIGS):
        n, k = out.shape[1], x.shape[1]
        assert cuda_w4ws.supports(x, fmt, packed, (n, k))
        cuda_w4ws.w4_wgws(x, packed, (n, k), b, out, group=group, bn=bn, bm=bm, stages=stages, split_k=split,
                          cluster=cl)
        err = reference.rel_err(out, want)
        assert err < TOL[dtype], f"tiles {packed['qweight'].shape} BN={bn} BM={bm} {stages=} {split=} {cl=}: {err:.2e}"


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("group,sym", [(128, False), (64, True)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bn,bm,split,cl", [(128, 256, 1, False), (256, 64, 3, False), (128, 128, 2, True),
                                            (256, 64, 1, False), (128, 256, 4, True), (128, 64, 1, False),
                                            (128, 64, 2, True)])
def test_one_hot_tokens_read_the_contract_weights_exactly(group, sym, dtype, bn, bm, split, cl):
    """Token t is the unit vector at k_t, so y[t] = W16[:, k_t] with one nonzero product per sum:
    exact in fp32 and in the 16-bit store. 256 tokens at k spread over every tile, quad lane, step,
    swizzle row and group."""
    from turbopack.inference.kernels import reference

    n, k = 512 + 16, 1024
    fmt, q = w4_weight(n, k, group, sym, dtype, 5 + group)
    w16 = reference.w4_weight16(q, dtype)
    ks = torch.cat([torch.randperm(k, device="cuda"), torch.randperm(k, device="cuda")])[:256]
    x = torch.zeros(256, k, device="cuda", dtype=dtype)
    x[torch.arange(256, device="cuda"), ks] = 1
    for tile_n in (64, 16):
        packed = reference.pack_w4(q, tile_n)
        y = cuda_w4ws.w4_wgws(x, packed, (n, k), None, group=group, bn=bn, bm=bm, stages=4, split_k=split, cluster=cl)
        assert torch.equal(y, w16[:, ks].T), f"tile_n={tile_n}"


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("bn,bm,split,cl", [(128, 256, 1, False), (256, 64, 1, False), (128, 128, 2, True),
                                            (256, 64, 3, False), (128, 64, 1, False)])
def test_ragged_n_strided_x_and_bias(bn, bm, split, cl):
    """N = 1004 (y's rows not 16-byte runs: ws_store.cuh's element path; a partial layout tile) with a
    bias, x a column slice of a wider tensor (its tensor map's row stride is not K), M = 200."""
    from turbopack.inference.kernels import reference

    n, k, m = 1004, 1024, 200
    fmt, q = w4_weight(n, k, 128, False, torch.bfloat16, 11)
    x = torch.randn(m, k + 64, device="cuda").bfloat16()[:, 32:32 + k]
    b = torch.randn(n, device="cuda").bfloat16()
    want = reference.ref_linear(x, "w4a16", q, b)
    for tile_n in (64, 16):
        packed = reference.pack_w4(q, tile_n)
        assert cuda_w4ws.supports(x, fmt, packed, (n, k))
        y = cuda_w4ws.w4_wgws(x, packed, (n, k), b, group=128, bn=bn, bm=bm, stages=4, split_k=split, cluster=cl)
        assert reference.rel_err(y, want) < TOL[torch.bfloat16], f"tile_n={tile_n}"


@pytest.mark.gpu
@hopper
def test_deterministic_and_in_a_graph():
    """Every CONFIGS entry at M = 300, bf16, twice: the same bits (split-K by slices sums in slice
    order); then one captured in a CUDA graph and replayed on new x."""
    from turbopack.inference.kernels import reference

    n, k = 1024 + 48, 1152
    fmt, q = w4_weight(n, k, 128, False, torch.bfloat16, 7)
    packed = reference.pack_w4(q, 64)
    x = torch.randn(300, k, device="cuda").bfloat16()
    ref = reference.ref_linear(x, "w4a16", q)
    for bn, bm, stages, split, cl in CONFIGS:
        kw = dict(group=128, bn=bn, bm=bm, stages=stages, split_k=split, cluster=cl)
        y = cuda_w4ws.w4_wgws(x, packed, (n, k), None, **kw)
        assert reference.rel_err(y, ref) < TOL[torch.bfloat16], kw
        assert torch.equal(y, cuda_w4ws.w4_wgws(x, packed, (n, k), None, **kw)), f"{kw}: not deterministic"
    kw = dict(group=128, bn=128, bm=256, stages=4, split_k=3, cluster=True)
    y2 = replayed_in_a_graph(lambda x: cuda_w4ws.w4_wgws(x, packed, (n, k), None, **kw), x)
    assert reference.rel_err(y2, reference.ref_linear(x, "w4a16", q)) < TOL[torch.bfloat16]


# -- CPU models of a stage's operands as the tensor core reads them ------------------------------------

@pytest.mark.parametrize("bm", [64, 128, 256])
def test_model_x_box_reaches_the_tensor_core_in_natural_k_order(bm):
    """x's tensor-map box (BM tokens x 64 k, the 128-byte swizzle: 16-byte chunk q of token t's 128-byte
    row at t 128 + 16 (q ^ (t & 7)), zeros past M): wgmma step u (descriptor start 32u bytes in) must
    see, at virtual k kk of token t, x[t, 64 kt + 16 u + kk]."""
    rng = np.random.default_rng(bm)
    m, k = bm - 24, 192
    x = rng.integers(0, 1 << 16, size=(m, k), dtype=np.uint16)
    for kt in range(k // 64):
        slot = np.zeros(bm * 64, np.uint16)
        for t, q in itertools.product(range(m), range(8)):
            at = t * 64 + 8 * (q ^ (t & 7))
            slot[at:at + 8] = x[t, 64 * kt + 8 * q:][:8]
        for u in range(4):
            want = np.zeros((16, bm), np.uint16)
            want[:, :m] = x[:, 64 * kt + 16 * u:][:, :16].T
            assert np.array_equal(wgmma_b(slot, 32 * u, bm), want), (kt, u)


def _gather_word(c: int, w: list[int]) -> int:
    """WsGather(c).word(w0, w1, w2, w3) (csrc/w4_wgws.cu): __byte_perm takes bytes c / 2 and c / 2 + 2
    of w0 and w2 (of w1 and w3), then nibble (c & 1) of the first's bytes goes low, of the second's high."""
    lo, hi, b = 4 * (c & 1), 4 - 4 * (c & 1), c >> 1
    sel = b | (4 + b) << 4 | (b + 2) << 8 | (6 + b) << 12
    return ((prmt(w[0], w[2], sel) >> lo) & 0x0F0F0F0F) | ((prmt(w[1], w[3], sel) << hi) & 0xF0F0F0F0)


@pytest.mark.parametrize("tn_rows", [16, 64])
def test_model_gathered_a_fragments_take_natural_k_order(tn_rows):
    """The packed layout's 32 bytes of a row and 64-k tile, through each quad lane c's gather and
    decode_words (word h, nibbles 2u' and 2u' + 4 -> step 2h + u', k 2c and 2c + 1; 2u' + 1 and 2u' + 5
    -> k 2c + 8 and 2c + 9), hold at wgmma step u the codes of k 16u + 2c (+1, +8, +9): the same k
    as x's box, so the tensor core multiplies matching k."""
    from turbopack.formats import get_format
    from turbopack.formats.int4 import unpack_nibbles
    from turbopack.inference.kernels import reference

    n, k = 2 * tn_rows, 256
    fmt = get_format("w4a16", group_size=64, sym=False, scale_dtype="bfloat16")
    q = fmt.quantize(torch.randn(n, k, generator=torch.Generator().manual_seed(tn_rows)))
    codes = unpack_nibbles(q["qweight"]).numpy()
    packed = reference.pack_w4(q, tn_rows)["qweight"].numpy().reshape(-1).view(np.uint32)
    kt_all = k // 64
    for r, kt in itertools.product(range(n), range(kt_all)):
        at = ((r // tn_rows * kt_all + kt) * tn_rows + r % tn_rows) * 8  # the row's 8 words
        w = [int(v) for v in packed[at:at + 8]]
        for c, h in itertools.product(range(4), range(2)):
            word = _gather_word(c, w[4 * h:4 * h + 4])
            nib = [(word >> 4 * j) & 0xF for j in range(8)]
            for u2 in range(2):
                kk = 64 * kt + 16 * (2 * h + u2) + 2 * c
                assert [nib[2 * u2], nib[2 * u2 + 4], nib[2 * u2 + 1], nib[2 * u2 + 5]] == \
                    list(codes[r, [kk, kk + 1, kk + 8, kk + 9]]), (r, kt, c, h, u2)


@pytest.mark.gpu
@hopper
def test_through_dispatch():
    """dispatch.linear runs the kernel from a cuda_ws config."""
    from turbopack.inference.kernels import reference
    from turbopack.inference.kernels.dispatch import linear

    n, k = 2048, 2048
    fmt, q = w4_weight(n, k, 128, False, torch.bfloat16, 3)
    packed = reference.pack_w4(q, 64)
    x = torch.randn(256, k, device="cuda").bfloat16()
    for cl in (None, True):
        cfg = KernelConfig(KernelName.CUDA_WS, block_n=256, block_m=64, split_k=2, ring_stages=5, cluster=cl)
        y = linear(x, fmt, "w4_t64x64", packed, (n, k), None, cfg)
        assert reference.rel_err(y, reference.ref_linear(x, "w4a16", q)) < TOL[torch.bfloat16], cl


def test_config_keys_round_trip():
    d = {"kernel": "cuda_ws", "BN": 128, "BM": 256, "SPLIT_K": 2, "STAGES": 5, "CLUSTER": True}
    cfg = KernelConfig.from_json(d, "test")
    assert cfg == KernelConfig(KernelName.CUDA_WS, block_n=128, block_m=256, split_k=2, ring_stages=5, cluster=True)
    assert cfg.to_json() == d


def test_tuner_offers_it_on_hopper_from_m_64():
    for m, n, k in ((256, 28672, 4096), (256, 4096, 14336), (200, 6144, 4096), (2048, 6144, 4096)):
        cands = [c for c in tune.candidates("w4a16", n, k, m, 132, hopper=True)
                 if c.kernel is KernelName.CUDA_WS and not c.stream_k]  # STREAM: test_ws_stream.py
        assert {(c.block_n, c.block_m) for c in cands} == set(cuda_w4ws.TILES)
        assert all(3 <= c.ring_stages <= cuda_w4ws.max_stages(c.block_n, c.block_m) for c in cands)
        assert all(1 <= c.split_k <= k // 64 // 8 for c in cands)
        # CLUSTER beside every split > 1 whose partials the ring holds
        assert all(c.cluster is None or (1 < c.split_k <= cuda_w4ws.CLUSTER_MAX
                                         and cuda_w4ws.cluster_fits(c.block_n, c.block_m, c.ring_stages))
                   for c in cands)
        twins = {(c.block_n, c.block_m, c.split_k, c.ring_stages) for c in cands if c.cluster}
        assert twins == {(c.block_n, c.block_m, c.split_k, c.ring_stages) for c in cands
                         if c.split_k > 1 and cuda_w4ws.cluster_fits(c.block_n, c.block_m, c.ring_stages)}
        assert twins or m >= 512 or n == 28672  # gate_up at 256 tokens: 224 row tiles, more than a wave
        if m >= 512:
            assert {c.split_k for c in cands} == {1}
        assert not [c for c in tune.candidates("w4a16", n, k, m, 132, hopper=False) if c.kernel is KernelName.CUDA_WS]
    # the tiles whose last token tile is at least half full, else the smallest
    half_full = {128: {(128, 128), (256, 64), (128, 64)}, 64: {(256, 64), (128, 64)},
                 100: {(256, 64), (128, 128), (128, 64)}}
    for m, tiles in half_full.items():
        cands = [c for c in tune.candidates("w4a16", 4096, 4096, m, 132, hopper=True)
                 if c.kernel is KernelName.CUDA_WS]
        assert {(c.block_n, c.block_m) for c in cands} == tiles, m
    assert not [c for c in tune.candidates("w4a16", 4096, 4096, 32, 132, hopper=True)
                if c.kernel is KernelName.CUDA_WS]


def test_tiles_and_split():
    # the default split: the most slices one wave of 132 SMs holds (one CTA an SM), at most max_split
    assert cuda_w4ws.wave_split(6144, 4096, 256, 128, 256, 132) == 2  # 48 tiles: 96 CTAs, not 144
    assert cuda_w4ws.wave_split(4096, 14336, 256, 128, 256, 132) == 4
    assert cuda_w4ws.wave_split(6144, 4096, 256, 128, 128, 132) == 1
    assert cuda_w4ws.wave_split(256, 4096, 64, 256, 64, 132) == cuda_w4ws.max_split(4096) == 8
    # CLUSTER's partials in the ring: 128 KB at 128 x 256 (4 stages of 37 KB), 64 KB at the others
    assert cuda_w4ws.slot_bytes(128, 256) == 37 * 1024 and cuda_w4ws.slot_bytes(256, 64) == 17 * 1024
    assert cuda_w4ws.cluster_fits(128, 256, 4) and not cuda_w4ws.cluster_fits(128, 256, 3)
    assert cuda_w4ws.cluster_fits(128, 128, 4) and not cuda_w4ws.cluster_fits(128, 128, 3)
    assert cuda_w4ws.cluster_fits(256, 64, 4) and not cuda_w4ws.cluster_fits(256, 64, 3)
    # the ring as deep as 227 KB holds (the slots, 1 KB of alignment, two mbarriers a slot)
    for bn, bm in cuda_w4ws.TILES:
        top = cuda_w4ws.max_stages(bn, bm)
        assert top * (cuda_w4ws.slot_bytes(bn, bm) + 16) + 1024 <= 227 * 1024
        assert (top + 1) * (cuda_w4ws.slot_bytes(bn, bm) + 16) + 1024 > 227 * 1024
    assert [cuda_w4ws.max_stages(bn, bm) for bn, bm in cuda_w4ws.TILES] == [6, 10, 13, 17]
    with pytest.raises(ValueError, match="3-6 stages"):
        cuda_w4ws.w4_wgws(torch.zeros(1, 128), {"qweight": torch.zeros(1)}, (64, 128), None, stages=7)
    with pytest.raises(ValueError, match="deeper ring"):
        cuda_w4ws.w4_wgws(torch.zeros(1, 128), {"qweight": torch.zeros(1)}, (64, 128), None, stages=3, cluster=True)
    assert all(bn * bm <= 128 * 256 and bn % 128 == 0 for bn, bm in cuda_w4ws.TILES)
    with pytest.raises(ValueError, match="128 x 256"):
        cuda_w4ws.w4_wgws(torch.zeros(1, 128), {"qweight": torch.zeros(1)}, (64, 128), None, bn=256, bm=256)


# -- a CPU model of a stage's weight, scale and zero copies against the consumers' reads ---------------

def _slot_source(tn_rows: int, kt_all: int, kgp: int, row0: int, kt: int, group: int, off: int, part: str) -> int:
    """ws_fill: the byte of qweight / scales / zeros that lands at byte `off` of a slot's weights [BN][32],
    scales [BN] (2 bytes) or zeros [BN] (1 byte): run t = off // (TN x size) of the CTA's row tile
    (row0 + t TN) / TN, 64-k tile kt, group kt 64 // G."""
    size = {"w": 32, "s": 2, "z": 1}[part]
    t, rem = divmod(off, tn_rows * size)
    tn = (row0 + t * tn_rows) // tn_rows
    if part == "w":
        return (tn * kt_all + kt) * tn_rows * 32 + rem
    return ((tn * kgp + kt * 64 // group) * tn_rows) * size + rem


@pytest.mark.parametrize("tn_rows,bn", [(16, 128), (64, 128), (16, 256), (64, 256)])
@pytest.mark.parametrize("group", [64, 128])
def test_model_consumers_decode_their_rows_from_the_copies(tn_rows, bn, group):
    """For every consumer thread (warp w of the 8, lane (g, c)), fragment r and row half e of a CTA, and
    every 64-k tile: the 8 weight bytes ws_mma reads from the slot (row rr + 16 r + 8 e, rr = 16 MT w + g,
    bytes 8c..) are bytes 8c.. of that row's 64 k in the packed layout (((R / TN) KT + kt) TN + R % TN)
    x 32, and its scale and zero are the row's for group kt 64 / G ([NT][KGP][TN])."""
    mt = bn // 128
    k = 512
    kt_all, kgp = k // 64, k // group
    for row0 in (0, bn, 3 * bn):
        for kt in range(kt_all):
            for w, g, c, r, e in itertools.product(range(8), range(8), range(4), range(mt), range(2)):
                row = 16 * mt * w + g + 16 * r + 8 * e
                R = row0 + row
                want_w = ((R // tn_rows * kt_all + kt) * tn_rows + R % tn_rows) * 32 + 8 * c
                assert _slot_source(tn_rows, kt_all, kgp, row0, kt, group, row * 32 + 8 * c, "w") == want_w
                want_s = (R // tn_rows * kgp + kt * 64 // group) * tn_rows + R % tn_rows
                assert _slot_source(tn_rows, kt_all, kgp, row0, kt, group, row * 2, "s") == 2 * want_s
                assert _slot_source(tn_rows, kt_all, kgp, row0, kt, group, row, "z") == want_s
