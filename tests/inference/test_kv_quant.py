"""Quantized KV cache: the int8/int4 math, attention over quantized K/V, and the Triton kernels
(under Triton's CPU interpreter here; on the GPU in the tests marked gpu)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # run the Triton kernels on Triton's CPU interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from turbopack.inference import kv_quant as KQ  # noqa: E402
from turbopack.inference.model import sdpa_gqa  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# --- the math --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 5, 64), (1, 1, 7, 32)])
def test_int8_is_symmetric_with_half_step_error(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g) * torch.rand(shape[:-1] + (1,), generator=g) * 10
    x[0, 0, 0] = 0  # an all-zero row must not divide by zero
    q, s, z = KQ.quantize_kv(x, 8)
    assert q.dtype == torch.int8 and z is None and s.shape == shape[:-1]
    assert int(q.min()) >= -127 and int(q.max()) <= 127
    xr = KQ.dequantize_kv(q, s, z, 8)
    bound = x.abs().amax(-1, keepdim=True) / 254
    assert bool(((xr - x).abs() <= bound * (1 + 1e-5) + 1e-12).all())
    assert bool((xr[0, 0, 0] == 0).all())
    # the row's largest magnitude is exactly representable: it maps to +-127
    assert bool((q.abs().amax(-1)[1:] == 127).all())


@pytest.mark.parametrize("shape", [(2, 3, 5, 64), (1, 2, 9, 32)])
def test_int4_is_asymmetric_with_half_step_error(shape):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g) + 3.0  # all-positive rows: a symmetric code would waste half its range
    q, s, z = KQ.quantize_kv(x, 4)
    assert q.dtype == torch.uint8 and q.shape == shape[:-1] + (shape[-1] // 2,)
    assert torch.equal(z, x.amin(-1))
    xr = KQ.dequantize_kv(q, s, z, 4)
    bound = (x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True)) / 30
    assert bool(((xr - x).abs() <= bound * (1 + 1e-5) + 1e-6).all())
    # min and max of each row are both hit exactly (codes 0 and 15)
    codes = torch.stack((q & 15, q >> 4), -1).flatten(-2)
    assert bool((codes.amin(-1) == 0).all()) and bool((codes.amax(-1) == 15).all())


def test_int4_nibble_order_is_even_low():
    x = torch.zeros(1, 1, 1, 32)
    x[..., 1] = 15.0  # odd element -> high nibble of byte 0
    q, s, z = KQ.quantize_kv(x, 4)
    assert int(q[0, 0, 0, 0]) == 0xF0 and float(s) == 1.0 and float(z) == 0.0


def test_cache_bytes_shrink():
    args = (1, 8, 4096, 128)
    bf16, i8, i4 = (KQ.cache_bytes(p, *args) for p in ("bf16", "int8", "int4"))
    assert i8 == bf16 / 2 * (132 / 128) and i4 == bf16 / 4 * (72 / 64)


def test_unknown_precision_lists_known():
    with pytest.raises(KeyError, match="bf16"):
        KQ.cache_factory("fp4")


# --- attention over the quantized cache (torch path) -----------------------------------------


def _fill(cache, b, hkv, p, d, g, dtype=torch.float32):
    k = torch.randn(b, hkv, p, d, generator=g).to(dtype)
    v = torch.randn(b, hkv, p, d, generator=g).to(dtype)
    pos = torch.arange(p)
    q = torch.randn(b, 2 * hkv, p, d, generator=g).to(dtype)
    s = cache.max_seq_len
    mask = torch.arange(s)[None, :] <= pos[:, None]
    return q, k, v, pos, mask


@pytest.mark.parametrize("precision,tol", [("int8", 0.02), ("int4", 0.25)])
def test_quantized_attention_is_close_to_full_precision(precision, tol):
    g = torch.Generator().manual_seed(2)
    b, hkv, s, d, p = 2, 2, 48, 64, 40
    full = KQ.cache_factory("bf16")(b, hkv, s, d, torch.float32)
    quant = KQ.cache_factory(precision)(b, hkv, s, d, torch.float32)
    q, k, v, pos, mask = _fill(full, b, hkv, p, d, g)
    ref = full.attend(q, k, v, pos, mask)
    out = quant.attend(q, k, v, pos, mask)
    err = rel_err(out, ref)
    assert 0 < err < tol
    # and it is exactly attention over the dequantized K/V (what the kernel must reproduce)
    kd, vd = quant.dequantized(b, torch.float32)
    assert torch.allclose(out, sdpa_gqa(q, kd, vd, mask), atol=1e-6)


# --- the Triton kernels under the interpreter ------------------------------------------------


@pytest.fixture
def attn():
    """kernels.attention: compiled on a GPU, interpreted on a CPU-only machine."""
    pytest.importorskip("triton")
    import turbopack.inference.kernels.attention as A

    if not HAS_CUDA and type(A._decode_kernel).__name__ != "InterpretedFunction":
        pytest.skip("kernels.attention was imported before TRITON_INTERPRET=1 was set")
    return A


def _device():
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.mark.parametrize("precision", ["bf16", "int8", "int4"])
def test_store_kernel_writes_the_same_codes_as_torch(attn, precision):
    g = torch.Generator().manual_seed(3)
    dev = _device()
    b, h, s, d, t = 2, 3, 16, 64, 5
    kern = KQ.cache_factory(precision, "triton")(b, h, s, d, torch.float32, dev)
    ref = KQ.cache_factory(precision, "torch")(b, h, s, d, torch.float32, dev)
    x = (torch.randn(b, h, t, d, generator=g) * 3).to(dev)
    x[0, 0, 0] = 1.5  # a constant row: scale 0 -> 1
    pos = torch.tensor([7, 1, 2, 3, 11], device=dev)
    kern.update(pos, x, x)
    ref.update(pos, x, x)
    for a, r in zip(kern.buffers(), ref.buffers()):
        assert torch.equal(a, r)


@pytest.mark.parametrize(
    "precision,fast", [("bf16", False), ("int8", False), ("int4", False), ("int8", True), ("int4", True)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_kernel_matches_torch_reference(attn, precision, fast, dtype, monkeypatch):
    monkeypatch.setattr(attn, "FAST_DEQUANT", fast)  # codes -> 16-bit by bit patterns, or by conversion
    g = torch.Generator().manual_seed(4)
    dev = _device()
    b, hkv, group, d = 2, 2, 3, 32
    s = 4 * attn.BLOCK_N * 3  # several splits, a partial last block, and splits past the end
    fac_k, fac_r = KQ.cache_factory(precision, "triton"), KQ.cache_factory(precision, "torch")
    kern, ref = fac_k(b, hkv, s, d, dtype, dev), fac_r(b, hkv, s, d, dtype, dev)
    p = 2 * attn.BLOCK_N + 5
    k = torch.randn(b, hkv, p, d, generator=g).to(dtype).to(dev)
    v = torch.randn(b, hkv, p, d, generator=g).to(dtype).to(dev)
    ref.update(torch.arange(p, device=dev), k, v)
    for a, r in zip(kern.buffers(), ref.buffers()):  # same contents (the store kernel is tested above)
        a.copy_(r)
    split_len, n_splits = attn.n_splits_for(b, hkv, s)
    assert n_splits > 1 and split_len * (n_splits - 1) >= p  # some splits are empty
    for pos in (0, p - 1, p):
        q = torch.randn(b, hkv * group, 1, d, generator=g).to(dtype).to(dev)
        kd = torch.randn(b, hkv, 1, d, generator=g).to(dtype).to(dev)
        vd = torch.randn(b, hkv, 1, d, generator=g).to(dtype).to(dev)
        ip = torch.tensor([pos], device=dev)
        mask = torch.arange(s, device=dev)[None, :] <= ip[:, None]
        out = kern.attend(q, kd, vd, ip, mask)
        want = ref.attend(q, kd, vd, ip, mask)
        assert out.shape == want.shape and out.dtype == dtype
        # fast int4 sums biased codes (128 + c) and subtracts 128 * sum: fp32 cancellation ~1e-5
        tol = 1e-2 if dtype != torch.float32 else (2e-4 if fast and precision == "int4" else 1e-5)
        assert rel_err(out, want) < tol, (precision, pos)


@pytest.mark.parametrize("precision", ["bf16", "int8", "int4"])
def test_decode_kernel_applies_the_layers_scale_softcap_and_window(attn, precision):
    """Gemma's attention in the decode kernel, read from the cache as setup_caches records it: a
    scale, a soft-cap and a sliding window spanning split boundaries, against the torch cache with
    the model's band mask; the same settings off give another answer (they bite)."""
    from turbopack.inference.model import band

    g = torch.Generator().manual_seed(9)
    dev = _device()
    b, hkv, group, d, window = 1, 2, 2, 32, 150
    s = 4 * attn.BLOCK_N * 3
    kern, ref = (KQ.cache_factory(precision, kind)(b, hkv, s, d, torch.float32, dev) for kind in ("triton", "torch"))
    p = 3 * attn.BLOCK_N + 5
    ref.update(torch.arange(p, device=dev), *(torch.randn(2, b, hkv, p, d, generator=g).to(dev) * 2))
    for a, r in zip(kern.buffers(), ref.buffers()):
        a.copy_(r)
    assert attn.n_splits_for(b, hkv, s)[0] < window  # the window covers parts of several splits
    for pos in (10, window - 1, window, p):
        q = (torch.randn(b, hkv * group, 1, d, generator=g) * 2).to(dev)
        ip = torch.tensor([pos], device=dev)
        mask = torch.arange(s, device=dev)[None, :] <= ip[:, None]
        plain = kern.attention(q, ip, mask)
        for c in (kern, ref):
            c.scale, c.softcap, c.window = 0.3, 2.0, window
        out, want = kern.attention(q, ip, mask), ref.attention(q, ip, band(mask, ip, 1, window, dev))
        for c in (kern, ref):
            c.scale = c.softcap = c.window = None
        assert rel_err(out, want) < 1e-5, (precision, pos)
        assert rel_err(plain, want) > 1e-2, (precision, pos)


@pytest.mark.parametrize("precision", ["bf16", "int4"])
def test_decode_kernel_single_split_writes_the_output_directly(attn, precision, monkeypatch):
    monkeypatch.setattr(attn, "TARGET_PROGRAMS", 1)  # one split: no merge kernel
    g = torch.Generator().manual_seed(7)
    dev = _device()
    b, hkv, d, s, p = 1, 2, 32, 96, 70
    kern = KQ.cache_factory(precision, "triton")(b, hkv, s, d, torch.float32, dev)
    ref = KQ.cache_factory(precision, "torch")(b, hkv, s, d, torch.float32, dev)
    ref.update(torch.arange(p, device=dev), *(torch.randn(2, b, hkv, p, d, generator=g).to(dev)))
    for a, r in zip(kern.buffers(), ref.buffers()):
        a.copy_(r)
    assert attn.n_splits_for(b, hkv, s)[1] == 1
    q = torch.randn(b, 2 * hkv, 1, d, generator=g).to(dev)
    ip = torch.tensor([p - 1], device=dev)
    mask = torch.arange(s, device=dev)[None, :] <= ip[:, None]
    assert rel_err(kern.attention(q, ip, mask), ref.attention(q, ip, mask)) < 1e-5


def _qkv_step(attn, precision, b, hkv, group, d, s, p, dtype, dev, seed, rotary=None):
    """Two caches holding the same p random tokens, a fused q|k|v row for the next token and the
    model's rotary tables (``rotary``: channels turned, partial rotary): what both decode paths
    start from."""
    from turbopack.inference.model import ModelConfig, rope_tables

    g = torch.Generator().manual_seed(seed)
    caches = [KQ.cache_factory(precision, "triton")(b, hkv, s, d, dtype, dev) for _ in range(2)]
    ref = KQ.cache_factory(precision, "torch")(b, hkv, s, d, dtype, dev)
    kv = (torch.randn(2, b, hkv, p, d, generator=g) * 2).to(dtype).to(dev)
    ref.update(torch.arange(p, device=dev), kv[0], kv[1])  # (the store kernel's codes: tested above)
    for c in caches:
        for x, y in zip(c.buffers(), ref.buffers()):
            x.copy_(y)
    qkv = torch.randn(b, 1, (group + 2) * hkv * d, generator=g).to(dtype).to(dev)
    cfg = ModelConfig(vocab=8, hidden=hkv * group * d, intermediate=8, n_layers=1, n_heads=hkv * group,
                      n_kv_heads=hkv, head_dim=d, rotary_dim=rotary)
    cos, sin = rope_tables(cfg, s, device=dev)
    return caches, qkv, cos.float().contiguous(), sin.float().contiguous()


@pytest.mark.parametrize("precision,rotary,live,min_len", [
    ("bf16", None, True, 128), ("int8", None, True, 128), ("int4", None, True, 128), ("bf16", 16, True, 128),
    ("int4", 16, True, 128), ("int4", None, False, 128), ("bf16", None, True, 256), ("int8", None, True, 512)])
def test_decode_attention_qkv_is_rope_store_then_attention(attn, precision, rotary, live, min_len, monkeypatch):
    """The one-launch decode step (rotary, the new K/V's store, attention and the split merge) gives
    the bits of the two-launch path, rope_store then decode_attention: the same output and the same
    cache bytes, with the new slot at a split's first and last position, in the first and last
    split, and several programs per (batch, kv head) to merge; under partial rotary too (16 of 32
    channels turned, Phi-4-mini's kind). live: the splits follow the position (at least min_len keys:
    128, one block, splits as long as the static ones at the last position; 256 and 512, fewer, and
    one for the whole cache at 512), those past it leave at once, and one live split stores the
    answer itself; off (LIVE_SPLITS, the A/B's old form), every split runs and merges."""
    from turbopack.inference.kernels.kv_store import rope_store

    monkeypatch.setattr(attn, "LIVE_SPLITS", live)
    monkeypatch.setattr(attn, "MIN_SPLIT_LEN", min_len)

    dev = _device()
    b, hkv, group, d = 2, 2, 3, 32
    s = 4 * attn.BLOCK_N
    split_len, n_splits = attn.n_splits_for(b, hkv, s)
    assert n_splits == 4
    for i, pos in enumerate((0, split_len - 1, split_len, s - 1)):
        (two, one), qkv, cos, sin = _qkv_step(attn, precision, b, hkv, group, d, s, pos, torch.float32, dev, 20 + i,
                                              rotary)
        ip = torch.tensor([pos], device=dev)
        q = rope_store(qkv, cos, sin, ip, two, hkv * group, hkv, d)
        if rotary:  # the unturned channels pass as they are
            assert torch.equal(q[:, 0, 0, rotary:], qkv[:, 0, rotary:d])
        want = attn.decode_attention(q, two, ip)
        got = attn.decode_attention_qkv(qkv, cos, sin, ip, one, hkv * group)
        assert got.shape == (b, hkv * group, 1, d)
        assert torch.equal(got, want), (precision, pos)
        for x, y in zip(one.buffers(), two.buffers()):
            assert torch.equal(x, y), (precision, pos)
        mask = torch.arange(s, device=dev)[None, :] <= ip[:, None]
        kd, vd = (two.k, two.v) if precision == "bf16" else two.dequantized(b, q.dtype)
        assert rel_err(got, sdpa_gqa(q, kd[:b], vd[:b], mask)) < 1e-5


_COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from turbopack.inference.kernels import attention as A
codes = {16: "bf16", 8: "i8", 4: "u8"}
for arch, bits in ((90, 4), (90, 16), (80, 8)):
    ptrs = dict(Q="bf16", COS="fp32", SIN="fp32", K=codes[bits], V=codes[bits], KS="fp32", KZ="fp32", VS="fp32",
                VZ="fp32", POS="i64", OUT="bf16", PART="fp32", LSE="fp32", CNT="i32")
    sig = {n: "*" + ptrs[n] if n in ptrs else "fp32" if n in ("qk_scale", "cap_out") else
           "constexpr" if n.isupper() else "i32" for n in A._decode_kernel.arg_names}
    const = dict(GROUP=4, BLOCK_H=16, BLOCK_N=128, D=128, BITS=bits, DOT_F32=False, DIRECT=False, FAST=False,
                 ROPE=True, ROT=128, CAP=False, LIVE=True, PDL=arch >= 90)
    ptx = triton.compile(ASTSource(fn=A._decode_kernel, signature=sig, constexprs=const),
                         target=GPUTarget("cuda", arch, 32), options=dict(num_warps=8, num_stages=2)).asm["ptx"]
    assert all(op in ptx for op in ("ld.global.cg", "atom.global", "bar.sync")), (arch, bits)
    assert ("griddepcontrol.wait" in ptx) == (arch >= 90), (arch, bits)
# every cache's heads of 128 and Gemma's of 256 (soft-capped) at the BLOCK_N _attend picks for them:
# within an sm_90 CTA's shared memory, and no register spills (ptxas's stack frame, read from the
# cubin by the cuobjdump that Triton's wheel ships)
import os, subprocess, tempfile
tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
for d, bits in ((128, 16), (128, 8), (128, 4), (256, 16), (256, 8), (256, 4)):
    const.update(D=d, ROT=d, BITS=bits, CAP=d == 256, BLOCK_N=A.default_block_n(d, bits), PDL=True)
    sig.update(K="*" + codes[bits], V="*" + codes[bits])
    k = triton.compile(ASTSource(fn=A._decode_kernel, signature=sig, constexprs=const),
                       target=GPUTarget("cuda", 90, 32), options=dict(num_warps=8, num_stages=2))
    assert 0 < k.metadata.shared <= 227 * 1024, (d, bits, k.metadata.shared)
    if os.path.exists(tool):
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(k.asm["cubin"]); f.flush()
            use = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        assert " STACK:0 " in use, (d, bits, use)
print("compiled")
"""


def test_decode_attention_compiles_for_sm90_and_sm80():
    """The one-launch decode attention through Triton's real compiler (the tests above interpret it):
    sm_90 and sm_80 PTX with the merge's L2 reads and counter atomics, the store-then-read barrier
    and, on sm_90, the PDL wait; every cache precision at heads of 128 and 256 without spills."""
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", _COMPILE], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]


@gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "int8", "int4"])
def test_decode_attention_qkv_on_gpu_llama8b_shapes(precision):
    """On the GPU: the one-launch step against rope_store + decode_attention at the 8B model's heads,
    twice per position in a CUDA graph (the counters are left zeroed for the next replay)."""
    from turbopack.inference.kernels import attention as A
    from turbopack.inference.kernels.kv_store import rope_store

    b, hkv, group, d, s = 1, 8, 4, 128, 4352
    for i, pos in enumerate((5, 1023, 4096)):
        (two, one), qkv, cos, sin = _qkv_step(A, precision, b, hkv, group, d, s, pos, torch.bfloat16, "cuda", 30 + i)
        ip = torch.tensor([pos], device="cuda")
        want = A.decode_attention(rope_store(qkv, cos, sin, ip, two, hkv * group, hkv, d), two, ip)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            got = A.decode_attention_qkv(qkv, cos, sin, ip, one, hkv * group)
        for _ in range(2):
            graph.replay()
            torch.cuda.synchronize()
            assert rel_err(got, want) < 1e-3, (precision, pos)
        for x, y in zip(one.buffers(), two.buffers()):
            assert x.shape == y.shape, (precision, pos)
            if x.numel():  # int8 K/V has no zero-point buffer's contents (an empty tensor)
                assert (x.float() - y.float()).abs().max() <= (1 if precision != "bf16" else 0.02), (precision, pos)


@gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize(
    "precision,fast", [("bf16", False), ("int8", False), ("int4", False), ("int8", True), ("int4", True)]
)
@pytest.mark.parametrize("shape", ["llama8b", "gemma2_9b"])
def test_decode_kernel_on_gpu_model_shapes(precision, fast, shape, monkeypatch):
    """The compiled decode kernel against the torch cache at Llama-3-8B's heads and at Gemma-2-9B's
    (D 256: the halved BLOCK_N; its scale, soft-cap 50 and a 4096 window that the last position
    reaches past)."""
    from turbopack.inference.kernels import attention as A
    from turbopack.inference.model import band

    monkeypatch.setattr(A, "FAST_DEQUANT", fast)

    g = torch.Generator(device="cuda").manual_seed(5)
    (hkv, group, d), p = {"llama8b": (8, 4, 128), "gemma2_9b": (8, 2, 256)}[shape], 4352
    b, s = 1, p + 256
    kern = KQ.cache_factory(precision, "triton")(b, hkv, s, d, torch.bfloat16, "cuda")
    # the reference attends in fp32 over the same stored values: in bf16, the soft-capped path
    # (HF's eager math) rounds scores and probabilities to 16 bits, ~0.8% of this output at 1000 keys.
    # The kernel's tensor-core operands are 16-bit (dequantized K/V, probabilities): 0.63% at 6 keys
    # on the H200 (run 11), so 1e-2.
    ref = KQ.cache_factory(precision, "torch")(b, hkv, s, d, torch.float32, "cuda")
    if shape == "gemma2_9b":
        for c in (kern, ref):
            c.scale, c.softcap, c.window = 256 ** -0.5, 50.0, 4096
    k = torch.randn(b, hkv, p, d, generator=g, device="cuda").bfloat16()
    v = torch.randn(b, hkv, p, d, generator=g, device="cuda").bfloat16()
    kern.update(torch.arange(p, device="cuda"), k, v)
    ref.update(torch.arange(p, device="cuda"), k.float(), v.float())
    for pos in (5, 1000, p):
        q = torch.randn(b, hkv * group, 1, d, generator=g, device="cuda").bfloat16()
        one = torch.randn(b, hkv, 1, d, generator=g, device="cuda").bfloat16()
        ip = torch.tensor([pos], device="cuda")
        mask = torch.arange(s, device="cuda")[None, :] <= ip[:, None]
        out = kern.attend(q, one, one, ip, mask)
        want = ref.attend(q.float(), one.float(), one.float(), ip,
                          mask if ref.window is None else band(mask, ip, 1, ref.window, "cuda"))
        assert torch.isfinite(out).all()
        assert rel_err(out, want) < 1e-2, (precision, pos)
    assert A.available(torch.device("cuda"))
