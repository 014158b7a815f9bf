"""The CUDA C++ W4A16 kernel for 16 < M <= 128 (csrc/w4_mma.cu, cuda_w4mm): on a GPU it matches the
float64 reference of the w4a16 contract on fresh random inputs. Its A operand is the contract's
16-bit weight bit for bit and the sums are fp32, so what is left is fp32 summation order and the
16-bit rounding of y: tolerance 4e-3 relative (Frobenius) for bf16 y (its rounding alone is ~1.1e-3),
1e-3 for fp16 (~1.4e-4). One-hot activations make y a copy of single weights, which must equal the
contract's 16-bit weights exactly (any fragment, permutation or scale-slot error shows). The CPU
tests cover the config keys, the tuner's candidates and the host's token-tile rule; the compile
check for sm_80/sm_90a/Blackwell is test_cuda_build.test_kernels_compile_without_spills."""

from __future__ import annotations

import pytest
import torch

from turbopack.inference.kernels import cuda_w4mm, tune
from turbopack.inference.kernels.config import KernelConfig, KernelName

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
TOL = {torch.bfloat16: 4e-3, torch.float16: 1e-3}
#: (BN, BM, STAGES, SPLIT_K) cycled over the cases: every instance (BN x token tile), every ring depth,
#: split 1, auto (0), uneven (4 over K = 1152: 9 stages, the last CTA one stage) and one stage per CTA (9)
CONFIGS = [(64, 32, 3, 1), (128, 64, 4, 0), (64, 128, 5, 4), (128, 128, 3, 9), (128, 32, 4, 2), (64, 64, 4, 0)]


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
        bn, bm, stages, split = CONFIGS[(case + 3 * i) % len(CONFIGS)]
        packed = reference.pack_w4(q, tile_n)
        x = torch.randn(m, k, device="cuda").to(dtype)
        b = torch.randn(n, device="cuda").to(dtype) if tile_n == 64 else None
        out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
        assert cuda_w4mm.supports(x, fmt, packed, (n, k))
        cuda_w4mm.w4_mma(x, packed, (n, k), b, out, group=group, bn=bn, bm=bm, stages=stages, split_k=split)
        err = reference.rel_err(out, reference.ref_linear(x, "w4a16", q, b))
        assert err < TOL[dtype], f"tile_n={tile_n} BN={bn} BM={bm} stages={stages} split={split}: rel err {err:.2e}"


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("group,sym", [(128, False), (64, True)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bn,bm,split", [(64, 128, 1), (128, 64, 3)])
def test_one_hot_tokens_read_the_contract_weights_exactly(group, sym, dtype, bn, bm, split):
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
        y = cuda_w4mm.w4_mma(x, packed, (n, k), None, group=group, bn=bn, bm=bm, stages=4, split_k=split)
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
    cfg = KernelConfig(KernelName.CUDA_MM, block_n=128, block_m=64, split_k=2, ring_stages=4)
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
    d = {"kernel": "cuda_mm", "BN": 128, "BM": 64, "SPLIT_K": 2, "STAGES": 4}
    cfg = KernelConfig.from_json(d, "test")
    assert cfg == KernelConfig(KernelName.CUDA_MM, block_n=128, block_m=64, split_k=2, ring_stages=4)
    assert cfg.to_json() == d


def test_tuner_offers_it_for_the_64_and_256_buckets_only():
    for m, n, k in ((64, 28672, 4096), (256, 4096, 14336), (32, 4096, 4096)):
        cands = [c for c in tune.candidates("w4a16", n, k, m, 132) if c.kernel is KernelName.CUDA_MM]
        assert cands, m
        assert {c.block_n for c in cands} <= set(cuda_w4mm.BNS)
        assert {c.block_m for c in cands} <= set(cuda_w4mm.BMS)
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
