"""The numba emulator (reads packed tensors) against the formats' references (read arch-neutral
tensors), on fresh random inputs, padded shapes included.

Tolerances (relative Frobenius error of y):
  16-bit activations: < 1e-2 (the output is rounded to 16 bits and sum orders differ)
  fp32 activations:   < 1e-5
  w8a8:               bit-exact (integer accumulation, same epilogue)
Every layout, asym w4 included, is held to those tolerances against the format's reference: the
w4 layouts store the zero points as codes and fold them in fp32 exactly (docs/layouts.md), which
``test_w4_decodes_bit_identically_to_the_format`` checks weight by weight.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from layout_cases import FORMATS, PAIRS, quantized, random_neutral, valid_k

from turbopack.errors import ShapeError
from turbopack.formats import FormatName
from turbopack.layouts import LAYOUTS, emulate_linear, get_layout, reference_linear
from turbopack.layouts.emulate import EMULATORS, _fp16_round, _round_act, e4m3_table

SHAPES = [(17, 96), (80, 192), (1, 128)]   # N (padded in every layout), K
CASES = [(pair, shape) for pair in PAIRS for shape in SHAPES if valid_k(FORMATS[pair[1]], shape[1])]


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def test_every_layout_has_an_emulator():
    assert set(EMULATORS) == {get_layout(n).name for n in LAYOUTS}


@pytest.mark.parametrize(
    "pair,shape", CASES, ids=lambda c: f"{c[0]}-{c[1]}" if isinstance(c[0], str) else f"{c[0]}x{c[1]}"
)
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
        else:
            assert err < tol, err


@pytest.mark.parametrize("layout_name", ["w4_t16x64", "w4_t64x64"])
@pytest.mark.parametrize("fmt_key", ["w4-asym-g32-bflo", "w4-asym-g128-floa", "w4-sym-g64-bflo", "w4-sym-g32-floa"])
def test_w4_decodes_bit_identically_to_the_format(layout_name, fmt_key):
    """x = identity in fp32 reads the decoded weights out one by one (y[m, n] = w[n, m], no
    rounding): they equal the format's (q - z) * s bit for bit, for every code, every zero point
    and scales from subnormal to huge (the per-group fold -(z*s) is exact in fp32)."""
    layout, fmt = get_layout(layout_name), FORMATS[fmt_key]
    n, k = layout.tile_n + 3, 256
    q = random_neutral(fmt, n, k, seed=len(fmt_key) + n)
    y = emulate_linear(torch.eye(k), fmt, layout, layout.pack(fmt, q, (n, k)), (n, k))
    want = fmt.dequantize(q).T
    assert torch.isfinite(want).all() and torch.equal(y, want)


def test_nvfp4_decodes_to_the_exact_products():
    """Identity activations read the emulator's weights out: with global scale 1 they are
    e2m1 * e4m3 exactly, the format's dequantization bit for bit, for every code and scale."""
    layout, fmt = get_layout("nvfp4_t16x64"), FORMATS["nvfp4"]
    n, k = 19, 192
    q = {**random_neutral(fmt, n, k, seed=3), "global_scale": torch.ones(1)}
    y = emulate_linear(torch.eye(k), fmt, layout, layout.pack(fmt, q, (n, k)), (n, k))
    assert torch.equal(y, fmt.dequantize(q).T)


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
    assert y.shape == (2, 1) and rel_err(y, fmt.linear(x, q)) < 1e-5


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
