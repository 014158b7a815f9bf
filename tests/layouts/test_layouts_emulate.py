"""The numba emulator (reads packed tensors) against the formats' references (read arch-neutral
tensors), on fresh random inputs, padded shapes included.

Tolerances (relative Frobenius error of y):
  16-bit activations: < 1e-2 (the output is rounded to 16 bits and sum orders differ)
  fp32 activations:   < 1e-5
  w8a8:               bit-exact (integer accumulation, same epilogue)
Asym w4 is compared with the layout's contract at those tolerances, and with the format within
the documented bound of the zero-point folding (szeros = scale_dtype(-z*s) is off by up to
|z*s|*u per weight, u = 2^-8 for bf16 scales, 2^-11 for fp16, the same error for a whole group):
that error is correlated along K, so on a single output with cancellation it can exceed 1e-2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from layout_cases import FORMATS, PAIRS, quantized, valid_k

from turbopack.errors import ShapeError
from turbopack.formats import FormatName
from turbopack.layouts import LAYOUTS, emulate_linear, get_layout, reference_linear
from turbopack.layouts.emulate import EMULATORS, _fp16_round, _round_act, e4m3_table

SHAPES = [(17, 96), (80, 192), (1, 128)]   # N (padded in every layout), K
CASES = [(pair, shape) for pair in PAIRS for shape in SHAPES if valid_k(FORMATS[pair[1]], shape[1])]


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def contract_w4(x: torch.Tensor, fmt, q: dict[str, torch.Tensor], bias: torch.Tensor | None = None) -> torch.Tensor:
    """The w4 layouts' numeric contract, written independently from the arch-neutral tensors."""
    codes = fmt.codes(q).float()
    n, k = codes.shape
    s = q["scales"].float().repeat_interleave(fmt.group_size, 1)
    if fmt.sym:
        w = (codes - 8) * s
    else:
        sz = (-(q["zeros"].float() * q["scales"].float())).to(q["scales"].dtype).float()
        w = codes * s + sz.repeat_interleave(fmt.group_size, 1)
    w16 = w.to(x.dtype).double()
    y = x.double() @ w16.T
    return (y if bias is None else y + bias.double()).to(x.dtype)


def test_every_layout_has_an_emulator():
    assert set(EMULATORS) == {get_layout(n).name for n in LAYOUTS}


@pytest.mark.parametrize("pair,shape", CASES, ids=lambda c: f"{c[0]}-{c[1]}" if isinstance(c[0], str) else f"{c[0]}x{c[1]}")
@pytest.mark.parametrize("act", [torch.bfloat16, torch.float16, torch.float32], ids=lambda d: str(d)[6:])
def test_emulator_matches_reference(pair, shape, act):
    layout, fmt = get_layout(pair[0]), FORMATS[pair[1]]
    n, k = shape
    q = quantized(fmt, n, k, seed=n + k)
    packed = layout.pack(fmt, q, shape)
    g = torch.Generator().manual_seed(n * k)
    for m in (1, 3, 17):
        x = torch.randn(m, k, generator=g).to(act)
        bias = torch.randn(n, generator=g).to(act) if m == 3 else None
        y = emulate_linear(x, fmt, layout, packed, shape, bias)
        ref = reference_linear(x, fmt, layout, q, bias)
        assert y.dtype == act and y.shape == (m, n)
        err = rel_err(y, ref)
        tol = 1e-5 if act == torch.float32 else 1e-2
        if fmt.name == FormatName.W8A8 and bias is None:
            assert torch.equal(y, ref), f"w8a8 should be bit-exact, rel err {err:.2e}"
        elif fmt.name == FormatName.W4A16 and not fmt.sym:
            assert rel_err(y, contract_w4(x, fmt, q, bias)) < tol
            assert_within_folding_bound(y, ref, x, fmt, q)
        else:
            assert err < tol, err


def assert_within_folding_bound(y, ref, x, fmt, q):
    """|y - y_format| <= folding error + 16-bit rounding of weights and output + fp32 sums."""
    u_s = 2.0**-8 if fmt.scale_dtype == "bfloat16" else 2.0**-11
    u_a = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 2.0**-24}[x.dtype]
    G = fmt.group_size
    xd = x.double()
    xsum = xd.reshape(x.shape[0], -1, G).sum(-1).abs()                  # [M, K/G]
    zs = (q["zeros"].double() * q["scales"].double()).abs()             # [N, K/G]
    fold = xsum @ (zs * u_s).T
    w_abs = fmt.dequantize(q).double().abs()
    absdot = xd.abs() @ w_abs.T
    bound = fold * (1 + 2 * u_a) + 2 * u_a * absdot + 2 * u_a * ref.double().abs() + 1e-6 * absdot
    assert bool(((y.double() - ref.double()).abs() <= bound + 1e-30).all()), float(((y.double() - ref.double()).abs() - bound).max())


def test_fp8_upcast_differs_from_native_only_by_activation_quantization():
    """On sm80/86 fp8 keeps activations 16-bit; its reference is the weights-only linear."""
    fmt = FORMATS["fp8-channel"]
    q = quantized(fmt, 32, 128, seed=1)
    x = torch.randn(4, 128, dtype=torch.bfloat16)
    up, native = get_layout("fp8_t16x64_upcast"), get_layout("fp8_rowmajor")
    y_up = emulate_linear(x, fmt, up, up.pack(fmt, q, (32, 128)), (32, 128))
    y_native = emulate_linear(x, fmt, native, native.pack(fmt, q, (32, 128)), (32, 128))
    assert rel_err(y_native, fmt.linear(x, q)) < 1e-2
    assert rel_err(y_up, fmt.linear(x, q)) > rel_err(y_up, reference_linear(x, fmt, up, q))


def test_padded_outputs_never_leak():
    """N=1 in a 64-row tile: the emulator returns exactly N columns, from the real row."""
    layout, fmt = get_layout("w4_t64x64"), FORMATS["w4-asym-g64-bflo"]
    q = quantized(fmt, 1, 128, seed=0)
    x = torch.randn(2, 128)
    y = emulate_linear(x, fmt, layout, layout.pack(fmt, q, (1, 128)), (1, 128))
    assert y.shape == (2, 1) and rel_err(y, contract_w4(x, fmt, q)) < 1e-5


def test_leading_dims_and_bad_input():
    layout, fmt = get_layout("i8_t16x64"), FORMATS["w8a16"]
    q = quantized(fmt, 16, 64, seed=0)
    packed = layout.pack(fmt, q, (16, 64))
    x = torch.randn(2, 3, 64, dtype=torch.bfloat16)
    assert emulate_linear(x, fmt, layout, packed, (16, 64)).shape == (2, 3, 16)
    with pytest.raises(ShapeError, match=r"\[\.\.\., 64\]"):
        emulate_linear(torch.randn(2, 32), fmt, layout, packed, (16, 64))
    with pytest.raises(ShapeError, match="packed for another shape"):
        emulate_linear(torch.randn(2, 64), fmt, layout, packed, (32, 64))


def test_16bit_rounding_matches_torch():
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.standard_normal(20000) * np.exp2(rng.integers(-30, 17, 20000)),   # fp16 normals, subnormals, overflow
        (rng.integers(0, 2**16, 5000).astype(np.float32) + 0.5) * 2.0**-24,   # exact fp16-subnormal ties
        (1 + (2 * rng.integers(0, 1024, 5000) + 1) / 2048.0) * 2.0**rng.integers(-14, 15, 5000),  # fp16 ties
        (1 + (2 * rng.integers(0, 128, 5000) + 1) / 256.0) * 2.0**rng.integers(-100, 100, 5000),  # bf16 ties
    ]).astype(np.float32)
    for mode, dtype in ((1, torch.bfloat16), (2, torch.float16)):
        buf = x.copy()
        _round_act(buf, mode)
        want = torch.from_numpy(x).to(dtype).float().numpy()
        assert np.array_equal(buf, want), f"{dtype}: {int((buf != want).sum())} values differ"
    assert _fp16_round(np.float32(65519.0)) == 65504.0 and np.isinf(_fp16_round(np.float32(65520.0)))


def test_e4m3_table_matches_torch():
    want = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float().numpy()
    got = e4m3_table()
    assert np.array_equal(np.isnan(got), np.isnan(want)) and np.array_equal(got[~np.isnan(got)], want[~np.isnan(want)])
