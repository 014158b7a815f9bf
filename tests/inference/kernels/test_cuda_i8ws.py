"""The warp-specialized CUDA C++ W8A8 GEMM on Hopper (csrc/i8_wgws.cu, cuda_i8ws): on an sm90 GPU it
matches the float64 reference of the w8a8 contract (per-token int8 activations, int32 sums, then
the two scales) on fresh random inputs within 4e-3 relative for bf16 y and 1e-3 for fp16 (the sums are
exact; only fp32 scaling and the 16-bit store round), integer operands with unit scales come out bit
for bit (an error in a tensor-map box, the swizzle, the ring or the epilogue's token order shows),
split-K is deterministic, and a CUDA graph replays it. On the CPU: the swizzle the copies write is
the one wgmma reads, the ring's size, the tuner's candidates, and dispatch's fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from wgmma_cases import TOL, hopper, run_rowmajor_ws, wgmma_b

from turbopack.formats import get_format
from turbopack.inference.kernels import cuda_build, cuda_i8ws, tune
from turbopack.inference.kernels.config import KernelConfig, KernelName
from turbopack.layouts import get_layout

#: (BM, STAGES, SPLIT_K, CLUSTER) cycled over the cases: every token tile, ring depths 3-9, split 1,
#: auto (0), uneven (4 over 9 stages) and one stage a slice (9), each with and without the slices'
#: cluster sum (CLUSTER; split 1 ignores it, split 9 becomes CLUSTER_MAX = 8 slices)
CONFIGS = [(256, 4, 1, False), (128, 3, 0, True), (64, 9, 4, False), (128, 7, 9, True), (64, 5, 1, True),
           (256, 3, 0, False), (128, 4, 2, True), (64, 3, 9, False), (256, 4, 1, True), (64, 6, 4, True)]


def _weight(n: int, k: int, seed: int, device: str = "cuda"):
    torch.manual_seed(seed)
    fmt = get_format("w8a8")
    q = fmt.quantize(torch.randn(n, k, device=device) * 0.02)
    return fmt, q, _pack(q)


def _pack(q: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from turbopack.inference.kernels import reference

    return reference.pack(q, get_layout("i8_rowmajor"))


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("m", [1, 17, 64, 130, 256, 300])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_reference(m, dtype, with_bias):
    from turbopack.inference.kernels import reference

    # N = 1000: a partial 128-row CTA (and 8-row layout padding); K = 1040: 8 whole 128-k stages and a
    # 16-k ninth, which the boxes zero-fill past K
    n, k = 1000, 1040
    fmt, q, packed = _weight(n, k, 31 * m + with_bias)
    for i in range(2):
        bm, stages, split, cl = CONFIGS[(m + 2 * with_bias + 3 * i) % len(CONFIGS)]
        x = torch.randn(m, k, device="cuda").to(dtype)
        b = torch.randn(n, device="cuda").to(dtype) if with_bias else None
        out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
        assert cuda_i8ws.supports(x, packed, (n, k))
        run_rowmajor_ws(x, packed, (n, k), b, out, bm, stages, split, cl)
        err = reference.rel_err(out, reference.ref_linear(x, "w8a8", q, b))
        assert err < TOL[dtype], f"BM={bm} {stages=} {split=} cluster={cl}: {err:.2e}"


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("bm,split,cluster", [(256, 1, False), (128, 3, False), (64, 1, False), (64, 2, False),
                                              (256, 1, True), (128, 3, True), (64, 2, True)])
@pytest.mark.parametrize("n", [1000, 1096, 1004])
def test_integer_operands_come_out_exactly(bm, split, cluster, n):
    """Codes in [-15, 15], weight scales 2^-7 and tokens whose largest |x| is 127 (per-token scale 1,
    so x's codes are x): every sum is an exact integer under 2^24 and y is exactly the contract's,
    rounded once to bf16. 300 tokens, K = 1040 and N = 1000 (8 row tiles) or 1096 (9, the last of 72
    rows; with CLUSTER a tenth, past N, copies its half of x for the ninth) cover every box edge;
    N = 1004 leaves y's rows off 16-byte runs (ws_store.cuh's element path)."""
    k, m = 1040, 300
    g = torch.Generator(device="cuda").manual_seed(bm + split)
    codes = torch.randint(-15, 16, (n, k), device="cuda", generator=g, dtype=torch.int8)
    q = {"qweight": codes, "scales": torch.full((n,), 2.0 ** -7, device="cuda")}
    x = torch.randint(-15, 16, (m, k), device="cuda", generator=g).float()
    x[torch.arange(m), torch.randint(0, k, (m,), device="cuda", generator=g)] = 127.0
    x = x.bfloat16()
    want = ((x.double() @ codes.double().T) * 2.0 ** -7).bfloat16()
    y = run_rowmajor_ws(x, _pack(q), (n, k), None, torch.empty(m, n, dtype=torch.bfloat16, device="cuda"), bm, 4,
                        split, cluster)
    assert torch.equal(y, want)


@pytest.mark.gpu
@hopper
def test_deterministic_in_a_graph_and_through_dispatch():
    """Every CONFIGS entry at M = 300 twice: the same bits (split-K by slices sums in slice order); one
    captured in a CUDA graph and replayed on new x; dispatch.linear runs it from a cuda_ws config."""
    from turbopack.inference.kernels import reference
    from turbopack.inference.kernels.dispatch import linear

    n, k = 1000, 1040
    fmt, q, packed = _weight(n, k, 7)
    x = torch.randn(300, k, device="cuda").bfloat16()
    ref = reference.ref_linear(x, "w8a8", q)
    for bm, stages, split, cl in CONFIGS:
        y = run_rowmajor_ws(x, packed, (n, k), None, torch.empty(300, n, dtype=x.dtype, device="cuda"), bm, stages,
                            split, cl)
        assert reference.rel_err(y, ref) < TOL[torch.bfloat16], (bm, stages, split, cl)
        again = run_rowmajor_ws(x, packed, (n, k), None, torch.empty_like(y), bm, stages, split, cl)
        assert torch.equal(y, again), f"BM={bm} {stages=} {split=} cluster={cl}: not deterministic"
    cfg = KernelConfig(KernelName.CUDA_WS, block_n=128, block_m=128, split_k=3, ring_stages=5, cluster=True)
    linear(x, fmt, "i8_rowmajor", packed, (n, k), None, cfg)  # built and loaded outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y2 = linear(x, fmt, "i8_rowmajor", packed, (n, k), None, cfg)
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    assert reference.rel_err(y2, reference.ref_linear(x, "w8a8", q)) < TOL[torch.bfloat16]


def _tma_swizzle_128b(box: np.ndarray) -> np.ndarray:
    """A tiled copy's box (rows x 128 bytes) as CU_TENSOR_MAP_SWIZZLE_128B leaves it in shared memory
    (1024-byte aligned): 16-byte chunk j of row r at chunk j ^ (r % 8) of the row (CUDA's tensor-map
    swizzle pattern)."""
    out = np.empty_like(box)
    for r in range(box.shape[0]):
        for j in range(8):
            out[r, 16 * (j ^ (r % 8)):][:16] = box[r, 16 * j:][:16]
    return out


@pytest.mark.parametrize("rows", [64, 128])
def test_model_the_boxes_swizzle_is_the_one_wgmma_reads(rows):
    """desc_k128 (wgmma.cuh) over a box the TMA unit wrote: k32 step u (descriptor start 32u bytes in)
    must see row r's int8 k 32u .. 32u + 31 (as 16-bit pairs, which is how wgmma_b reads bytes)."""
    rng = np.random.default_rng(rows)
    box = rng.integers(0, 256, size=(rows, 128), dtype=np.uint8)
    smem = _tma_swizzle_128b(box).reshape(-1).view(np.uint16)
    for u in range(4):
        got = wgmma_b(smem, 32 * u, rows)  # [16 pairs, rows]
        want = box[:, 32 * u:32 * u + 32].copy().view(np.uint16).T
        assert np.array_equal(got, want), u


@pytest.mark.skipif(cuda_build.nvcc() is None, reason="nvcc not installed")
def test_x_is_copied_only_after_the_previous_grid(tuned_build):
    """PDL (pdl.py): the kernel may start while the quantizer that writes x's codes and scales still
    runs, so every x copy, the scales' loads and every store come after griddepcontrol.wait; the
    weights' first ring (the hinted tensor copies) may come before it (sm_90a's PTX of the session's
    build)."""
    import re

    res, keep = tuned_build(cuda_i8ws.SRC)
    assert res.returncode == 0, res.stderr[-2000:]
    ptx = (keep / f"{cuda_i8ws.SRC.stem}.compute_90a.ptx").read_text()
    heads = list(re.finditer(r"\.entry\s+(\S+)\(", ptx))
    bodies = [ptx[h.end(): heads[i + 1].start() if i + 1 < len(heads) else len(ptx)] for i, h in enumerate(heads)
              if "i8_wgws_kernel" in h.group(1)]
    assert len(bodies) == 12  # 3 token tiles x 2 dtypes x 2 codes (int8, e4m3)
    for body in bodies:
        wait = body.find("griddepcontrol.wait")
        weights = body.find("cache_hint")
        x = body.find("bytes [")
        loads = [m.start() for m in re.finditer(r"ld\.global", body)]
        stores = [m.start() for m in re.finditer(r"st\.global", body)]
        assert 0 <= weights < wait < x
        assert stores and min(stores) > wait and (not loads or min(loads) > wait)


def test_ring_fits_shared_memory():
    for bm in cuda_i8ws.TOKEN_TILES:
        top = cuda_i8ws.max_stages(bm)
        assert top * (cuda_i8ws.ROWS + bm) * cuda_i8ws.STAGE_K + 1024 + 16 * top + 4 * bm <= cuda_build.SM90_SMEM_MAX
        assert (top + 1) * (cuda_i8ws.ROWS + bm) * cuda_i8ws.STAGE_K > cuda_build.SM90_SMEM_MAX - 1024
    assert [cuda_i8ws.max_stages(bm) for bm in (256, 128, 64)] == [4, 7, 9]
    with pytest.raises(ValueError, match="3-4 stages"):
        cuda_i8ws.i8_wgws(None, None, {}, (8, 16), None, None, bm=256, stages=5)
    with pytest.raises(ValueError, match="no 32-token tile"):
        cuda_i8ws.i8_wgws(None, None, {}, (8, 16), None, None, bm=32)


def test_wave_split_stays_in_one_wave():
    """One CTA an SM: the default split is the most slices whose CTAs fit the SMs (run 31: a split
    spilling into a second wave doubled the slices' time), at most max_split."""
    assert cuda_i8ws.wave_split(6144, 4096, 256, 256, 132) == 2  # 48 tiles: 96 CTAs, not 144
    assert cuda_i8ws.wave_split(4096, 4096, 256, 256, 132) == 4  # 32 tiles: 128 CTAs, not 160
    assert cuda_i8ws.wave_split(6144, 4096, 256, 128, 132) == 1  # 96 tiles already
    assert cuda_i8ws.wave_split(128, 4096, 64, 64, 132) == cuda_i8ws.max_split(4096) == 8
    assert cuda_i8ws.wave_split(28672, 4096, 2048, 256, 132) == 1


def test_tuner_offers_it_on_hopper_from_m_64():
    for m, n, k in ((256, 6144, 4096), (256, 4096, 14336), (2048, 28672, 4096), (100, 4096, 4096)):
        cands = [c for c in tune.candidates("w8a8", n, k, m, 132, hopper=True) if c.kernel is KernelName.CUDA_WS]
        assert cands, (m, n, k)
        assert all(c.block_n == 128 and 3 <= c.ring_stages <= cuda_i8ws.max_stages(c.block_m) for c in cands)
        assert all(1 <= c.split_k <= cuda_i8ws.max_split(k) for c in cands)
        # CLUSTER: the slices' cluster sum, offered beside the global planes for every split > 1
        assert all(c.cluster is None or 1 < c.split_k <= cuda_i8ws.CLUSTER_MAX for c in cands)
        split = {(c.block_m, c.split_k, c.ring_stages) for c in cands if c.split_k > 1}
        assert split == {(c.block_m, c.split_k, c.ring_stages) for c in cands if c.cluster}
        if m >= 512:
            assert {c.split_k for c in cands} == {1}
        else:
            assert split
        assert not [c for c in tune.candidates("w8a8", n, k, m, 132, hopper=False) if c.kernel is KernelName.CUDA_WS]
    tiles = {c.block_m for c in tune.candidates("w8a8", 4096, 4096, 100, 132, hopper=True)
             if c.kernel is KernelName.CUDA_WS}
    assert tiles == {64, 128}  # 100 tokens: a 128 tile is 78% full, a 256 tile 39%
    assert not [c for c in tune.candidates("w8a8", 4096, 4096, 32, 132, hopper=True) if c.kernel is KernelName.CUDA_WS]


def test_dispatch_falls_back_where_it_cannot_run():
    """A cuda_ws entry for i8_rowmajor on a machine without the kernel (here: the CPU) runs the family
    default and still meets the contract."""
    from turbopack.inference.kernels import reference
    from turbopack.inference.kernels.dispatch import linear

    if torch.cuda.is_available():
        pytest.skip("the fallback is for machines without an sm90 GPU")
    n, k = 64, 256
    fmt, q, packed = _weight(n, k, 3, device="cpu")
    x = torch.randn(5, k).bfloat16()
    cfg = KernelConfig(KernelName.CUDA_WS, block_n=128, block_m=64, split_k=2, ring_stages=5)
    y = linear(x, fmt, "i8_rowmajor", packed, (n, k), None, cfg)
    assert reference.rel_err(y, reference.ref_linear(x, "w8a8", q)) < TOL[torch.bfloat16]
