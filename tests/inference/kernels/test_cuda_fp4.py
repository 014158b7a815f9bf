"""The CUDA C++ NVFP4 decode kernel (csrc/fp4.cu).

CPU: bit-exact models of what the kernel computes (its decode of every code under every scale byte,
its byte addresses and K order), checked against the format and layout. GPU: the kernel against
the float64 contract (reference.ref_linear) and the CPU emulator on fresh random inputs, within the
16-bit rounding of y (5e-3 relative in bf16, 1e-3 in fp16, as for cuda_w8); identity activations
read every weight back exactly (e2m1 * e4m3 has <= 6 significant bits: exact in bf16 and fp16).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from turbopack.formats import get_format
from turbopack.formats.nvfp4 import E2M1_VALUES
from turbopack.inference.kernels import cuda_fp4, dispatch, epilogue, reference
from turbopack.inference.kernels.config import KernelConfig, KernelName
from turbopack.layouts import emulate_linear, get_layout
from turbopack.layouts.emulate import e4m3_table

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
TOL = {torch.bfloat16: 5e-3, torch.float16: 1e-3}
SRC_TEXT = cuda_fp4.SRC.read_text()
M32 = 0xFFFFFFFF


# -- bit-exact models of fp4.cu (every constant below is checked to be the kernel's) -----------------

def prmt(a: np.ndarray, b: np.ndarray, sel: int) -> np.ndarray:
    """PTX prmt.b32 (default mode): byte k of the result is byte sel[4k..4k+2] of {b, a}, or with
    sel bit 4k+3 set, that byte's sign bit replicated."""
    src = (b.astype(np.uint64) << 32) | a.astype(np.uint64)
    out = np.zeros_like(a, dtype=np.uint64)
    for k in range(4):
        nib = (sel >> (4 * k)) & 15
        byte = (src >> np.uint64(8 * (nib & 7))) & np.uint64(0xFF)
        if nib & 8:
            byte = np.where(byte & np.uint64(0x80), np.uint64(0xFF), np.uint64(0))
        out |= byte << np.uint64(8 * k)
    return out.astype(np.uint32)


def pair_bits(w: np.ndarray, e: int, fp16: bool) -> np.ndarray:
    """Fp4<T>::pair<E>: nibbles e and e + 4 of w as a 16-bit pair (e2m1 * 2^-14 fp16 / 2^-126 bf16)."""
    w = w.astype(np.uint64)
    if fp16:
        mag, mask = (w << np.uint64(9 - 4 * e) if e < 3 else w >> np.uint64(3)), 0x0E000E00
    else:
        mag, mask = (w << np.uint64(6 - 4 * e) if e < 2 else w >> np.uint64(4 * e - 6)), 0x01C001C0
    return (((mag & mask) | ((w << np.uint64(12 - 4 * e)) & 0x80008000)) & M32).astype(np.uint32)


def halves(bits: np.ndarray, fp16: bool) -> torch.Tensor:
    """uint32 pairs -> [.., 2] 16-bit floats (low half first)."""
    h = torch.from_numpy(bits.astype(np.uint32).view(np.int16).reshape(*bits.shape, 2).copy())
    return h.view(torch.float16 if fp16 else torch.bfloat16)


def scale_pair(sw: np.ndarray, sel: int, fp16: bool) -> torch.Tensor:
    """Fp4<T>::scale: the byte sel picks, s * 2^7 in both halves, with the kernel's multiplies."""
    p = prmt(sw, np.zeros_like(sw), sel).astype(np.uint64)
    if fp16:
        return halves(((p << np.uint64(7)) & 0xBF80BF80).astype(np.uint32), True) * halves(np.array([0x78007800]), True)
    s = halves(((p << np.uint64(4)) & 0x87F087F0).astype(np.uint32), False)
    return s * halves(np.array([0x7F007F00]), False) * halves(np.array([0x77807780]), False)


def test_model_constants_are_the_kernels():
    for const in ("0x0E000E00u", "0x01C001C0u", "0x80008000u", "0xBF80BF80u", "0x78007800u", "0x87F087F0u",
                  "0x7F007F00u", "0x77807780u", "0xA2A2u", "0x8080u", "0xB3B3u", "0x9191u", "0x5410", "0x7632"):
        assert const in SRC_TEXT, const
    assert "constexpr float kPost = 128.f" in SRC_TEXT
    assert re.search(r"if constexpr \(E < 3\) mag = w << \(9 - 4 \* E\);\s+else mag = w >> 3;", SRC_TEXT)
    assert re.search(r"if constexpr \(E < 2\) mag = w << \(6 - 4 \* E\);\s+else mag = w >> \(4 \* E - 6\);", SRC_TEXT)
    assert SRC_TEXT.count("(w << (12 - 4 * E)) & 0x80008000u") == 2


@pytest.mark.parametrize("fp16", [True, False], ids=["fp16", "bf16"])
def test_decode_is_exact_for_every_code_and_scale_byte(fp16):
    """Every code (in either half of a pair, the other nibbles and scale bytes random) under every
    e4m3 byte: the kernel's 16-bit weight is e2m1 * s * 2^-7 exactly, and never Inf/NaN (the NaN
    bytes 0x7F / 0xFF included, so a stale ring slot can only add 0 * finite)."""
    rng = np.random.default_rng(0)
    e2m1 = np.array(E2M1_VALUES + tuple(-v for v in E2M1_VALUES))
    e4m3 = e4m3_table().astype(np.float64)
    code, byte = np.meshgrid(np.arange(16), np.arange(256), indexing="ij")
    code, byte = code.ravel(), byte.ravel()
    other = (code + 5) % 16  # the high half's code
    for e in range(4):
        for i, sel in enumerate((0x8080, 0x9191, 0xA2A2, 0xB3B3)):
            w = rng.integers(0, 2**32, code.size, dtype=np.uint64)
            w &= ~np.uint64((0xF << (4 * e)) | (0xF << (4 * e + 16)))
            w = (w | (code.astype(np.uint64) << np.uint64(4 * e)) | (other.astype(np.uint64) << np.uint64(4 * e + 16)))
            sw = rng.integers(0, 2**32, byte.size, dtype=np.uint64) & ~np.uint64(0xFF << (8 * i))
            sw = (sw | (byte.astype(np.uint64) << np.uint64(8 * i))).astype(np.uint32)
            w16 = halves(pair_bits(w.astype(np.uint32), e, fp16), fp16) * scale_pair(sw, sel, fp16)
            assert torch.isfinite(w16).all()
            want = np.stack([e2m1[code], e2m1[other]], -1) * e4m3[byte][:, None] / 128
            ok = np.isfinite(want)
            assert ok.sum() == 2 * 16 * 254
            assert np.array_equal(w16.double().numpy()[ok], want[ok]), f"nibble {e}, scale byte {i}"


def kernel_map(nt: int, kt: int):
    """For every code the kernel reads: (n, k, code byte offset, nibble, scale byte offset) as
    fp4.cu addresses them (warp tn, stage st, lane (g, c), row g / g + 8, word j, nibble e)."""
    tn, st, g, c, r8, j, e = np.meshgrid(np.arange(nt), np.arange((kt + 1) // 2), np.arange(8), np.arange(4),
                                         np.arange(2), np.arange(4), np.arange(8), indexing="ij")
    tile = tn * kt + 2 * st + c // 2
    ok = 2 * st + c // 2 < kt  # s_iss: only tiles that exist are copied
    row = g + 8 * r8
    code_at = tile * 512 + row * 32 + 16 * (c & 1) + 4 * j + e // 2
    scale_at = tile * 64 + row * 4 + 2 * (c & 1) + j // 2
    n, k = 16 * tn + row, 128 * st + 32 * c + 8 * j + e
    return [a[ok] for a in (n, k, code_at, e & 1, scale_at)]


@pytest.mark.parametrize("n,k", [(40, 208), (17, 144), (48, 256)])
def test_kernel_addressing_reads_every_code_and_scale(n, k):
    """The kernel's byte addresses find code (n, k) and its block scale in the packed tensors, and
    each (n, k) of the padded weight is read exactly once."""
    gen = torch.Generator().manual_seed(n + k)
    q = {"qweight": torch.randint(0, 256, (n, k // 2), generator=gen, dtype=torch.uint8),
         "scales": torch.randint(0, 256, (n, k // 16), generator=gen, dtype=torch.uint8).view(torch.float8_e4m3fn),
         "global_scale": torch.ones(1)}
    packed = get_layout("nvfp4_t16x64").pack(get_format("nvfp4"), q, (n, k))
    nt, kt = packed["qweight"].shape[:2]
    rn, rk, code_at, hi, scale_at = kernel_map(nt, kt)
    assert len(set(zip(rn.tolist(), rk.tolist()))) == rn.size == nt * 16 * kt * 64
    codes = packed["qweight"].flatten().numpy()[code_at] >> (4 * hi) & 15
    scales = packed["scales"].view(torch.uint8).flatten().numpy()[scale_at]
    real = (rn < n) & (rk < k)
    want = reference.w4_codes(q["qweight"]).numpy()
    assert np.array_equal(codes[real], want[rn[real], rk[real]])
    assert np.array_equal(scales[real], q["scales"].view(torch.uint8).numpy()[rn[real], rk[real] // 16])
    assert not codes[~real].any() and not scales[~real].any()  # padding reads as weight 0


def test_mma_operands_pair_each_weight_with_its_activation():
    """In each MMA step, A's pair registers (nibbles (e, e + 4) of word j) and B's (x regrouped by
    the kernel's prmt selectors) hold the same k, and a stage's 16 steps x 4 lanes cover its 128 k."""
    xw = np.array([0x00010000 * (2 * i + 1) + 2 * i for i in range(4)], dtype=np.uint32)  # halves = index
    seen = []
    for c in range(4):
        for j in range(4):
            k0 = 32 * c + 8 * j
            for h, (a, b) in enumerate(((xw[0], xw[2]), (xw[1], xw[3]))):  # mma_stage: (q.x, q.z), (q.y, q.w)
                for slot, sel in enumerate((0x5410, 0x7632)):  # b0, b1
                    e = 2 * h + slot  # A: a0/a1 nibble pair (2h, 2h + 4), a2/a3 (2h + 1, 2h + 5)
                    xb = int(prmt(np.array([a]), np.array([b]), sel)[0])
                    assert (xb & 0xFFFF, xb >> 16) == (e, e + 4)
                    seen += [k0 + e, k0 + e + 4]
    assert sorted(seen) == list(range(128))


def test_stage_bounds():
    """s_iss copies exactly the tiles that exist; at most one stage holds K (x masked there only)."""
    for k in range(16, 4112, 16):
        kt = -(-k // 64)
        stages = (kt + 1) // 2
        for half in (0, 1):
            assert [st < (kt - half + 1) >> 1 for st in range(stages)] == [2 * st + half < kt for st in range(stages)]
        assert stages - k // 128 in (0, 1), k


def test_tuner_offers_the_cuda_kernel_for_decode_only():
    from turbopack.inference.kernels import tune

    for m, want in ((1, True), (16, True), (17, False), (256, False)):
        cands = tune.candidates("nvfp4", 4096, 4096, m, 132)
        cuda = [c for c in cands if c.kernel is KernelName.CUDA]
        assert bool(cuda) == want
        assert all(c.ring_stages in cuda_fp4.STAGES for c in cuda)


# -- on the GPU --------------------------------------------------------------------------------------

def _quantized(n: int, k: int, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return get_format("nvfp4").quantize(torch.randn(n, k, device="cuda") * 0.02)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("m", [1, 3, 8, 9, 16])
@pytest.mark.parametrize("split,stages", [(1, 3), (3, 4), (0, 6)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decode_matches_the_contract(m, split, stages, dtype):
    n, k = 1000, 1040  # N pads to 1008 (a partial CTA); K pads to 17 tiles (odd: a half last stage)
    q = _quantized(n, k, 100 * m + stages)
    packed = reference.pack_nvfp4(q)
    x = torch.randn(m, k, device="cuda").to(dtype)
    b = torch.randn(n, device="cuda").to(dtype)
    out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
    assert cuda_fp4.supports(x, packed, (n, k))
    cuda_fp4.fp4_decode(x, packed, (n, k), b, split, out, stages=stages)
    err = reference.rel_err(out, reference.ref_linear(x, "nvfp4", q, b))
    assert err < TOL[dtype], f"rel err {err:.2e}"
    for buf in epilogue._WS.values():
        assert not buf.any(), "split-K must leave its workspace and counters at zero"


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decode_matches_the_emulator(dtype):
    n, k, m = 40, 208, 5
    gen = torch.Generator().manual_seed(3)
    fmt, layout = get_format("nvfp4"), get_layout("nvfp4_t16x64")
    packed = layout.pack(fmt, fmt.quantize(torch.randn(n, k, generator=gen)), (n, k))
    x = torch.randn(m, k, generator=gen).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype)
    y = cuda_fp4.fp4_decode(x.cuda(), {key: t.cuda() for key, t in packed.items()}, (n, k), b.cuda(), 2)
    assert reference.rel_err(y.cpu(), emulate_linear(x, fmt, layout, packed, (n, k), bias=b)) < TOL[dtype]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("k", [144, 208])  # 3 tiles (a stage with one tile), 4 tiles (K inside the last one)
@pytest.mark.parametrize("split,stages", [(1, 3), (2, 4)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_identity_activations_read_every_product_exactly(k, split, stages, dtype):
    """Every e4m3 byte but NaN (negative and subnormal scales too) under random codes, global
    scale 1: one-hot tokens (1..16 at a time) read y[t, n] = e2m1 * s of (n, k0 + t) bit for bit."""
    n = 40
    gen = torch.Generator().manual_seed(k + split)
    finite = torch.tensor([b for b in range(256) if b & 0x7F != 0x7F], dtype=torch.uint8)
    q = {"qweight": torch.randint(0, 256, (n, k // 2), generator=gen, dtype=torch.uint8),
         "scales": finite[torch.arange(n * k // 16) % finite.numel()].view(n, k // 16).view(torch.float8_e4m3fn),
         "global_scale": torch.ones(1)}
    want = get_format("nvfp4").dequantize(q).to(dtype).cuda()
    packed = {key: t.cuda() for key, t in reference.pack_nvfp4(q).items()}
    eye = torch.eye(k, dtype=dtype, device="cuda")
    k0, sizes = 0, (16, 1, 5, 8, 9, 13, 16, 2)
    for i in range(k):
        if k0 >= k:
            break
        m = min(sizes[i % len(sizes)], k - k0)
        y = cuda_fp4.fp4_decode(eye[k0:k0 + m].contiguous(), packed, (n, k), None, split, stages=stages)
        assert torch.equal(y, want[:, k0:k0 + m].T), f"k={k0}..{k0 + m - 1}"
        k0 += m


@pytest.mark.gpu
@gpu
def test_replays_from_a_cuda_graph():
    n, k, m = 4096, 4096, 4
    q = _quantized(n, k, 7)
    packed = reference.pack_nvfp4(q)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    cuda_fp4.fp4_decode(x, packed, (n, k), None, 0)  # build, load, raise the smem limit outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = cuda_fp4.fp4_decode(x, packed, (n, k), None, 0)
    x.copy_(torch.randn(m, k, device="cuda"))
    g.replay()
    torch.cuda.synchronize()
    assert reference.rel_err(y, reference.ref_linear(x, "nvfp4", q)) < TOL[torch.bfloat16]


@pytest.mark.gpu
@gpu
def test_dispatch_runs_it_where_the_config_says_cuda(monkeypatch):
    n, k, m = 512, 1024, 2
    q = _quantized(n, k, 11)
    packed = reference.pack_nvfp4(q)
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    calls = []
    real = cuda_fp4.fp4_decode
    monkeypatch.setattr(cuda_fp4, "fp4_decode", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    cfg = KernelConfig(KernelName.CUDA, split_k=2, ring_stages=6)
    y = dispatch.linear(x, get_format("nvfp4"), "nvfp4_t16x64", packed, (n, k), config=cfg)
    assert calls == [{"stages": 6}]
    assert reference.rel_err(y, reference.ref_linear(x, "nvfp4", q)) < TOL[torch.float16]
    # 17 tokens: not the decode kernel's case, so the Triton kernels take it
    y = dispatch.linear(torch.randn(17, k, device="cuda", dtype=torch.float16), get_format("nvfp4"), "nvfp4_t16x64",
                        packed, (n, k), config=cfg)
    assert len(calls) == 1 and y.shape == (17, n)
