"""The one-pass numba W4 quantizer is bit-identical to the torch reference of the format."""

from __future__ import annotations

import pytest
import torch

from turbopack.formats import get_format
from turbopack.formats.int4_numba import quantize_w4


def adversarial(rows: int, k: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, k, generator=g) * torch.logspace(-4, 1, rows)[:, None]  # scales across 5 decades
    w[0] = 0                       # all-zero groups: s == 0 -> 1
    w[1] = w[1].abs()              # all-positive: lo clamps to 0
    w[2] = -w[2].abs()             # all-negative: hi clamps to 0
    w[3, ::2] = 1e-30              # subnormal-ish values beside normal ones
    w[4] = torch.arange(k) % 16 - 7.5   # exact .5 ties after scaling: round half to even
    return w.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("group,shape", [(32, (7, 96)), (64, (192, 576)), (128, (33, 1024))])
def test_numba_quantizer_equals_reference(dtype, sym, group, shape):
    fmt = get_format("w4a16", group_size=group, sym=sym)
    for seed in range(3):
        w = adversarial(*shape, dtype, seed)
        before = w.clone()
        got = quantize_w4(w, group, sym)
        want = fmt.reference_quantize(w)
        assert torch.equal(w, before)  # input untouched
        assert set(got) == set(want)
        for name in want:
            assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
            assert torch.equal(got[name], want[name]), (name, seed)


def test_format_quantize_takes_the_fast_path_and_agrees():
    fmt = get_format("w4a16", group_size=64)
    w = adversarial(64, 256, torch.bfloat16, 9)
    fast = fmt.quantize(w)
    ref = fmt.reference_quantize(w)
    assert all(torch.equal(fast[k], ref[k]) for k in ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("sym", [False, True])
def test_numba_fake_quant_equals_dequantize_of_reference(dtype, sym):
    from turbopack.formats.int4_numba import fake_w4

    fmt = get_format("w4a16", group_size=64, sym=sym)
    w = adversarial(40, 576, dtype, 5)
    got = fake_w4(w, 64, sym)
    assert got.dtype == torch.float32 and torch.equal(got, fmt.dequantize(fmt.reference_quantize(w)))
