"""Formats: quantize/dequantize against plain per-element references, error bounds, properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from turbopack.errors import BadTensorError, ShapeError, UnknownNameError
from turbopack.formats import FORMATS, check_finite, format_from_params, get_format
from turbopack.formats.int4 import pack_nibbles, unpack_nibbles

ALL = [("w4a16", {"group_size": 32}), ("w4a16", {"group_size": 64, "sym": True}),
       ("w4a16", {"group_size": 128, "scale_dtype": "float16"}), ("w8a16", {}), ("w8a8", {}),
       ("fp8", {}), ("fp8", {"per_tensor": True}), ("nvfp4", {})]


def _ref_int4(w: np.ndarray, g: int, sym: bool, sdt: torch.dtype):
    """Element-by-element reference of docs/formats.md (slow, obviously right)."""
    n, k = w.shape
    codes = np.zeros((n, k), np.uint8)
    scales = np.zeros((n, k // g), np.float32)
    zeros = np.zeros((n, k // g), np.uint8)
    for r in range(n):
        for gi in range(k // g):
            grp = w[r, gi * g:(gi + 1) * g].astype(np.float32)
            if sym:
                s = float(torch.tensor(np.float32(np.abs(grp).max() / np.float32(7))).to(sdt).float())
                s = s or 1.0
                z = 8
                q = [min(max(int(np.round(np.float32(v) / np.float32(s))), -8), 7) + 8 for v in grp]
            else:
                lo, hi = min(grp.min(), 0), max(grp.max(), 0)
                s = float(torch.tensor(np.float32((hi - lo) / np.float32(15))).to(sdt).float())
                s = s or 1.0
                z = min(max(int(np.round(np.float32(-lo) / np.float32(s))), 0), 15)
                q = [min(max(int(np.round(np.float32(v) / np.float32(s))) + z, 0), 15) for v in grp]
            codes[r, gi * g:(gi + 1) * g] = q
            scales[r, gi], zeros[r, gi] = s, z
    return codes, scales, zeros


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("sdt", ["bfloat16", "float16"])
def test_int4_matches_elementwise_reference(sym, sdt):
    torch.manual_seed(0)
    w = torch.randn(6, 64) * torch.rand(6, 1) * 3
    w[0, :32] = 0.0          # an all-zero group
    w[1, :32] = 0.25         # a constant group
    fmt = get_format("w4a16", group_size=32, sym=sym, scale_dtype=sdt)
    q = fmt.quantize(w)
    codes, scales, zeros = _ref_int4(w.numpy(), 32, sym, getattr(torch, sdt))
    assert np.array_equal(fmt.codes(q).numpy(), codes)
    assert np.array_equal(q["scales"].float().numpy(), scales)
    if not sym:
        assert np.array_equal(q["zeros"].numpy(), zeros)
    d = fmt.dequantize(q)
    assert torch.equal(d[0, :32], torch.zeros(32))
    assert torch.allclose(d[1, :32], torch.full((32,), 0.25), rtol=1e-2)


@pytest.mark.parametrize("name,params", ALL)
def test_error_bound_and_specs(name, params):
    torch.manual_seed(1)
    fmt = get_format(name, **params)
    w = torch.randn(48, 256, dtype=torch.bfloat16)
    q = fmt.quantize(w)
    specs = fmt.specs((48, 256))
    assert {s.suffix for s in specs} == set(q)
    for s in specs:
        assert q[s.suffix].dtype == s.dtype and tuple(q[s.suffix].shape) == s.shape, s
    err = (fmt.dequantize(q) - w.float()).abs()
    # each element is within half a quantization step of its group/channel scale
    if name == "w4a16":
        # half a step, plus the grid shift from rounding the scale to 16 bits (<= 15 * 2^-8 steps)
        step = q["scales"].float().repeat_interleave(fmt.group_size, dim=1)
        assert bool((err <= step * (0.5 + 15 * 2**-8) + 1e-6).all())
    elif name in ("w8a16", "w8a8"):
        assert bool((err <= q["scales"][:, None] * 0.5 + 1e-7).all())
    elif name == "nvfp4":  # the widest e2m1 gap is 4 -> 6: half of it, in units of s/gs (tests/formats/test_nvfp4.py)
        step = (q["scales"].float() / q["global_scale"]).repeat_interleave(16, dim=1)
        assert bool((err <= step * 1.0 + 1e-7).all())
    else:  # e4m3 has 3 mantissa bits: relative error <= 2^-4 for normals
        wf = w.float()
        s = q["scales"]
        sub = 2.0 ** -9 * (s[:, None] if s.numel() > 1 else s)
        assert bool((err <= wf.abs() * 2 ** -4 + sub).all())


@pytest.mark.parametrize("name,params", ALL)
def test_linear_reference(name, params):
    torch.manual_seed(2)
    fmt = get_format(name, **params)
    w = torch.randn(64, 128)
    x = torch.randn(5, 128)
    q = fmt.quantize(w)
    y = fmt.linear(x, q, bias=torch.ones(64))
    ref = x @ w.T + 1
    rel = float((y - ref).norm() / ref.norm())
    assert rel < {"w4a16": 0.15, "w8a16": 0.01, "w8a8": 0.02, "fp8": 0.06, "nvfp4": 0.15}[name]
    if fmt.act_bits == 16:
        assert torch.allclose(y, x @ fmt.dequantize(q).T + 1, atol=1e-5)


def test_w8a8_is_integer_exact():
    torch.manual_seed(3)
    fmt = get_format("w8a8")
    w, x = torch.randn(8, 32), torch.randn(3, 32)
    q = fmt.quantize(w)
    y = fmt.linear(x, q)
    sx = x.abs().amax(1) / 127
    qx = torch.clamp(torch.round(x / sx[:, None]), -127, 127)
    acc = (qx.long() @ q["qweight"].long().T).float()
    assert torch.allclose(y, acc * sx[:, None] * q["scales"][None, :], rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 9), groups=st.integers(1, 4), g=st.sampled_from([32, 64, 128]),
       sym=st.booleans(), seed=st.integers(0, 2**31 - 1), scale=st.floats(1e-4, 1e3))
def test_int4_properties(n, groups, g, sym, seed, scale):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, groups * g, generator=gen) * scale
    fmt = get_format("w4a16", group_size=g, sym=sym)
    q = fmt.quantize(w)
    codes = fmt.codes(q)
    assert int(codes.max()) <= 15
    # the dequantized value is within ~half a step of the input, whatever the magnitude
    step = q["scales"].float().repeat_interleave(g, dim=1)
    assert bool(((fmt.dequantize(q) - w).abs() <= step * (0.5 + 15 * 2**-8) * (1 + 1e-6)).all())
    # row chunks quantize independently (streaming is exact)
    if n > 1:
        a, b = fmt.quantize(w[:1]), fmt.quantize(w[1:])
        assert torch.equal(torch.cat([a["qweight"], b["qweight"]]), q["qweight"])


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 8), k=st.integers(1, 40).map(lambda v: 2 * v), seed=st.integers(0, 1000))
def test_nibble_pack_roundtrip(rows, k, seed):
    codes = torch.randint(0, 16, (rows, k), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    packed = pack_nibbles(codes)
    assert packed.shape == (rows, k // 2)
    assert torch.equal(unpack_nibbles(packed), codes)
    assert int(packed[0, 0]) == int(codes[0, 0]) | (int(codes[0, 1]) << 4)


def test_params_roundtrip_and_errors():
    for name, params in ALL:
        fmt = get_format(name, **params)
        assert format_from_params(fmt.params()) == fmt
    assert set(FORMATS.names()) == {"w4a16", "w8a16", "w8a8", "fp8", "nvfp4"}
    with pytest.raises(UnknownNameError, match="registered: fp8, nvfp4, w4a16, w8a16, w8a8"):
        get_format("int3")
    with pytest.raises(ShapeError, match="group size 48"):
        get_format("w4a16", group_size=48)
    with pytest.raises(
        ShapeError, match=r"K=96 is not a multiple of group size 64; group sizes that divide it: \[32\]"
    ):
        get_format("w4a16", group_size=64).check_shape("x.weight", (8, 96))
    with pytest.raises(BadTensorError, match="x.weight: 1 NaN"):
        check_finite("x.weight", torch.tensor([1.0, math.nan]))


def test_bits_per_weight():
    assert get_format("w4a16", group_size=128, sym=True).bits_per_weight((4096, 4096)) == 4.125
    assert get_format("w4a16", group_size=128).bits_per_weight((4096, 4096)) == 4.1875


def _vllm_style_int8_row(row: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """vLLM's dynamic_scaled_int8_quant for one token, element by element in float32
    (csrc/quantization/compressed_tensors/int8_quant_kernels.cu): scale = amax / 127, codes =
    round-half-even(x * (127 / amax)) saturated to int8."""
    amax = np.float32(0)
    for v in row:
        amax = max(amax, np.float32(abs(v)))
    inv = np.float32(np.float32(127) / amax)
    codes = np.array([min(127, max(-128, int(np.rint(np.float32(v * inv))))) for v in row], np.int8)
    return codes, np.float32(amax / np.float32(127))


def test_w8a8_activation_codes_follow_vllm():
    from turbopack.formats.int8 import quantize_rows_int8

    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(64, 384, generator=gen) * 4).bfloat16()
    q, s = quantize_rows_int8(x)
    div = torch.clamp(torch.round(x.float() / s[:, None]), -127, 127).to(torch.int8)
    assert not torch.equal(q, div), "the sample must hold rows where x*(127/a) and x/(a/127) round apart"
    xs = x.float().numpy()
    for m in range(x.shape[0]):
        want_q, want_s = _vllm_style_int8_row(xs[m])
        assert np.array_equal(q[m].numpy(), want_q) and s[m].item() == want_s
    zq, zs = quantize_rows_int8(torch.zeros(2, 8))
    assert not zq.any() and torch.equal(zs, torch.ones(2))
