"""The warp-specialized W8A16 kernel on Hopper (csrc/w4_wgws.cu on int8 rows, cuda_w8ws): on an sm90 GPU
it matches the weights-only reference y = fp32(sum x16 * q) * s (+ bias) on fresh random inputs
within the 16-bit rounding of y (test_cuda_w8's tolerances: 5e-3 relative in bf16, 1e-3 in fp16),
one-hot tokens read every code back exactly (the gather, the int8 conversion, the row scale and the
store), split-K sums are deterministic and a CUDA graph replays it. On the CPU: a model of the A
fragments' gather on the packer's bytes, the ring's depths and the tuner's candidates."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from wgmma_cases import hopper, prmt, replayed_in_a_graph

from turbopack.formats import get_format
from turbopack.inference.kernels import cuda_w4ws, cuda_w8ws, reference, tune
from turbopack.inference.kernels.config import KernelConfig, KernelName

TOL = {torch.bfloat16: 5e-3, torch.float16: 1e-3}
#: (BN, BM, STAGES, SPLIT_K, CLUSTER) cycled over the cases: every tile, rings of 3 to the deepest
#: (5 / 9 / 9 / 14), split 1, auto (0), uneven (4 and 7 over 18 stages), more slices than stages
#: (18 through planes), in a cluster
CONFIGS = [(128, 256, 4, 1, False), (128, 128, 3, 0, False), (256, 64, 9, 4, True), (128, 256, 5, 2, True),
           (256, 64, 4, 1, False), (128, 128, 9, 3, True), (128, 64, 14, 1, False), (128, 64, 4, 7, True),
           (128, 256, 5, 18, False), (128, 64, 3, 0, False)]


def _weight(n: int, k: int, seed: int, device: str = "cuda") -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return get_format("w8a16").quantize(torch.randn(n, k, device=device) * 0.02)


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("m", [17, 64, 200, 300])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matches_reference(m, dtype):
    n, k = 1024 + 48, 1152  # partial 128- and 256-row CTAs and a partial 64-row tile; 18 stages
    q = _weight(n, k, m)
    for i, tile_n in enumerate((64, 16)):
        packed = reference.pack_bytes(q["qweight"], q["scales"], tile_n, 64)
        x = torch.randn(m, k, device="cuda").to(dtype)
        b = torch.randn(n, device="cuda").to(dtype) if tile_n == 64 else None
        out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
        bn, bm, stages, split, cl = CONFIGS[(m + 3 * i) % len(CONFIGS)]
        assert cuda_w8ws.supports(x, packed, (n, k))
        cuda_w8ws.w8_wgws(x, packed, (n, k), b, out, bn=bn, bm=bm, stages=stages, split_k=split, cluster=cl)
        err = reference.rel_err(out, reference.ref_linear(x, "w8a16", q, b))
        assert err < TOL[dtype], f"{tile_n=} BN={bn} BM={bm} {stages=} {split=} {cl=}: {err:.2e}"


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bn,bm,split,cl", [(128, 256, 1, False), (256, 64, 3, False), (128, 128, 2, True),
                                            (128, 64, 1, False)])
def test_one_hot_tokens_read_every_code_exactly(dtype, bn, bm, split, cl):
    """Codes uniform over -128..127, scales 1 (then 2: a power of two keeps it exact): token t is the
    unit vector at k_t, so y[t] = q[:, k_t] * s with one nonzero product per sum, exact in fp32 and in
    the 16-bit store. 256 tokens at k spread over every tile, quad lane, step and swizzle row."""
    n, k = 512 + 16, 1024
    torch.manual_seed(bm + split)
    codes = torch.randint(-128, 128, (n, k), device="cuda", dtype=torch.int8)
    ks = torch.cat([torch.randperm(k, device="cuda"), torch.randperm(k, device="cuda")])[:256]
    x = torch.zeros(256, k, device="cuda", dtype=dtype)
    x[torch.arange(256, device="cuda"), ks] = 1
    for tile_n, scale in ((64, 1.0), (16, 2.0)):
        s = torch.full((n,), scale, device="cuda")
        packed = reference.pack_bytes(codes, s, tile_n, 64)
        y = cuda_w8ws.w8_wgws(x, packed, (n, k), None, bn=bn, bm=bm, stages=4, split_k=split, cluster=cl)
        assert torch.equal(y, (codes[:, ks].T.float() * scale).to(dtype)), f"{tile_n=}"


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("bn,bm,split,cl", [(128, 256, 1, False), (256, 64, 1, False), (128, 128, 2, True),
                                            (128, 64, 3, False)])
def test_ragged_n_strided_x_and_bias(bn, bm, split, cl):
    """N = 1004 (y's rows not 16-byte runs; padded rows' scales 0) with a bias, x a column slice of a
    wider tensor (its tensor map's row stride is not K), M = 200."""
    n, k, m = 1004, 1024, 200
    q = _weight(n, k, 11)
    x = torch.randn(m, k + 64, device="cuda").bfloat16()[:, 32:32 + k]
    b = torch.randn(n, device="cuda").bfloat16()
    want = reference.ref_linear(x, "w8a16", q, b)
    for tile_n in (64, 16):
        packed = reference.pack_bytes(q["qweight"], q["scales"], tile_n, 64)
        assert cuda_w8ws.supports(x, packed, (n, k))
        y = cuda_w8ws.w8_wgws(x, packed, (n, k), b, bn=bn, bm=bm, stages=4, split_k=split, cluster=cl)
        assert reference.rel_err(y, want) < TOL[torch.bfloat16], f"{tile_n=}"


@pytest.mark.gpu
@hopper
def test_deterministic_in_a_graph_and_through_dispatch():
    """Every CONFIGS entry at M = 300, bf16, twice: the same bits; one captured in a CUDA graph and
    replayed on new x; dispatch.linear runs it from a cuda_ws entry of the i8_t64x64 family."""
    from turbopack.inference.kernels.dispatch import linear

    n, k = 1024 + 48, 1152
    q = _weight(n, k, 7)
    packed = reference.pack_bytes(q["qweight"], q["scales"], 64, 64)
    x = torch.randn(300, k, device="cuda").bfloat16()
    ref = reference.ref_linear(x, "w8a16", q)
    for bn, bm, stages, split, cl in CONFIGS:
        kw = dict(bn=bn, bm=bm, stages=stages, split_k=split, cluster=cl)
        y = cuda_w8ws.w8_wgws(x, packed, (n, k), None, **kw)
        assert reference.rel_err(y, ref) < TOL[torch.bfloat16], kw
        assert torch.equal(y, cuda_w8ws.w8_wgws(x, packed, (n, k), None, **kw)), f"{kw}: not deterministic"
    kw = dict(bn=128, bm=256, stages=4, split_k=3, cluster=True)
    y2 = replayed_in_a_graph(lambda x: cuda_w8ws.w8_wgws(x, packed, (n, k), None, **kw), x)
    assert reference.rel_err(y2, reference.ref_linear(x, "w8a16", q)) < TOL[torch.bfloat16]
    cfg = KernelConfig(KernelName.CUDA_WS, block_n=256, block_m=64, split_k=2, ring_stages=5, cluster=True)
    y = linear(x, get_format("w8a16"), "i8_t64x64", packed, (n, k), None, cfg)
    assert reference.rel_err(y, reference.ref_linear(x, "w8a16", q)) < TOL[torch.bfloat16]


# -- CPU models ----------------------------------------------------------------------------------------

def _w8_gather_word(c: int, w: list[int]) -> int:
    """W8Gather(c).word(w) (csrc/w4_wgws.cu)."""
    sel_lo, sel_hi = 2 * c | (2 * c + 1) << 4, (2 * c) << 8 | (2 * c + 1) << 12
    return prmt(prmt(w[0], w[1], sel_lo), prmt(w[2], w[3], sel_hi), 0x7610)


@pytest.mark.parametrize("tile_n", [16, 64])
def test_model_gathered_a_fragments_take_natural_k_order(tile_n):
    """A slot row is the packed tile row's 64 bytes (the producer's bulk copy of TN x 64 bytes); for each
    quad lane c and step u, the word W8Gather builds from the row's 16-byte chunk u holds the codes of
    k 16u + 2c, + 1 (bytes 0-1: A registers a0 / a1) and 16u + 2c + 8, + 9 (bytes 2-3: a2 / a3): the same
    k as x's box (test_cuda_w4ws's model), so the tensor core multiplies matching k."""
    n, k = 2 * tile_n, 256
    q = _weight(n, k, tile_n, device="cpu")
    codes = q["qweight"].view(torch.uint8).numpy()
    packed = reference.pack_bytes(q["qweight"], q["scales"], tile_n, 64)["qweight"]
    words = packed.contiguous().view(torch.uint8).numpy().reshape(-1).view(np.uint32)
    kt_all = k // 64
    for r, kt in itertools.product(range(n), range(kt_all)):
        at = ((r // tile_n * kt_all + kt) * tile_n + r % tile_n) * 16  # the row's 16 words
        row = [int(v) for v in words[at:at + 16]]
        for c, u in itertools.product(range(4), range(4)):
            word = _w8_gather_word(c, row[4 * u:4 * u + 4])
            kk = 64 * kt + 16 * u + 2 * c
            assert [(word >> 8 * i) & 0xFF for i in range(4)] == list(codes[r, [kk, kk + 1, kk + 8, kk + 9]])


def test_ring_depths_and_cluster():
    # a slot: x [BM][128 B] + BN rows of 64 bytes, 1024-aligned; as deep as 227 KB holds
    assert cuda_w4ws.slot_bytes(128, 256, cuda_w8ws.ROW_BYTES) == 40 * 1024
    assert [cuda_w8ws.max_stages(bn, bm) for bn, bm in cuda_w8ws.TILES] == [5, 9, 9, 14]
    for bn, bm in cuda_w8ws.TILES:
        top, slot = cuda_w8ws.max_stages(bn, bm), cuda_w4ws.slot_bytes(bn, bm, cuda_w8ws.ROW_BYTES)
        assert top * (slot + 16) + 1024 <= 227 * 1024 < (top + 1) * (slot + 16) + 1024
    assert cuda_w8ws.cluster_fits(128, 256, 4) and not cuda_w8ws.cluster_fits(128, 256, 3)
    with pytest.raises(ValueError, match="3-5 stages"):
        cuda_w8ws.w8_wgws(torch.zeros(1, 128), {"qweight": torch.zeros(1)}, (64, 128), None, stages=6)


def test_tuner_offers_it_on_hopper_from_m_64():
    for m, n, k in ((64, 28672, 4096), (256, 4096, 14336), (2048, 6144, 4096)):
        cands = [c for c in tune.candidates("w8a16", n, k, m, 132, hopper=True) if c.kernel is KernelName.CUDA_WS]
        assert cands and {(c.block_n, c.block_m) for c in cands} <= set(cuda_w8ws.TILES)
        assert all(3 <= c.ring_stages <= cuda_w8ws.max_stages(c.block_n, c.block_m) for c in cands)
        assert all(not c.cluster or cuda_w8ws.cluster_fits(c.block_n, c.block_m, c.ring_stages) for c in cands)
        assert not [c for c in tune.candidates("w8a16", n, k, m, 132, hopper=False) if c.kernel is KernelName.CUDA_WS]
    assert not [c for c in tune.candidates("w8a16", 4096, 4096, 32, 132, hopper=True) if c.kernel is KernelName.CUDA_WS]
    assert not [c for c in tune.candidates("w8a16", 4096, 4160, 256, 132, hopper=True)  # K not in 128-k blocks
                if c.kernel is KernelName.CUDA_WS]


@pytest.mark.parametrize("tile_n,bn", [(16, 128), (64, 128), (16, 256), (64, 256)])
def test_model_consumers_read_their_rows_from_the_copies(tile_n, bn):
    """ws_fill at WB = 8 copies run t of a stage (TN x 64 bytes) from layout tile (row0 + t TN) / TN, 64-k
    tile kt, to slot byte t TN x 64; for every consumer thread (warp w of the 8, lane g), fragment r, row
    half hh and chunk u, the 16 bytes ws_mma8 reads at slot byte (rr + 16 r + 8 hh) x 64 + 16 u (rr =
    16 MT w + g) are bytes 16u.. of that row's 64 k in the packed layout."""
    mt, kt_all = bn // 128, 8

    def slot_source(row0: int, kt: int, off: int) -> int:
        t, rem = divmod(off, tile_n * 64)
        return (((row0 + t * tile_n) // tile_n * kt_all + kt) * tile_n) * 64 + rem

    for row0, kt in itertools.product((0, bn, 3 * bn), range(kt_all)):
        for w, g, r, hh, u in itertools.product(range(8), range(8), range(mt), range(2), range(4)):
            row = 16 * mt * w + g + 16 * r + 8 * hh
            big_r = row0 + row
            want = ((big_r // tile_n * kt_all + kt) * tile_n + big_r % tile_n) * 64 + 16 * u
            assert slot_source(row0, kt, row * 64 + 16 * u) == want
