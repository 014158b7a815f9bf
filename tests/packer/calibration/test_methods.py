"""The methods on the textbook case: one linear layer whose input has a few outlier channels
(20-50x the rest) on top of correlated (low-rank + noise) activations, as real LLM inputs have.
Each calibrated method must beat plain RTN on the layer's output error by a wide margin, and
produce exactly what the format can store."""

from __future__ import annotations

import pytest
import torch

from turbopack.formats import get_format
from turbopack.packer.calibration.awq import linear_output, search_clip, search_scale
from turbopack.packer.calibration.gptq import GPTQConfig, gptq_quantize
from turbopack.packer.calibration.grid import grid_for
from turbopack.packer.calibration.smoothquant import smooth_scales

OUTLIERS = (3, 70, 150, 200)
W4_CASES = [("w4a16", {"group_size": 64}), ("w4a16", {"group_size": 64, "sym": True}),
            ("w4a16", {"group_size": 32, "scale_dtype": "float16"}), ("w8a16", {}), ("w8a8", {})]


def layer(seed: int = 0, tokens: int = 2048, k: int = 256, n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, 32, generator=g) @ (torch.randn(32, k, generator=g) / 32**0.5)
    x = x + 0.3 * torch.randn(tokens, k, generator=g)
    x[:, list(OUTLIERS)] *= torch.linspace(20, 50, len(OUTLIERS))
    return x, 0.02 * torch.randn(n, k, generator=g)


def out_err(x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return float((x @ w.T - x @ w_hat.T).norm())


def rtn_err(fmt, x, w) -> float:
    return out_err(x, w, fmt.dequantize(fmt.quantize(w)))


@pytest.mark.parametrize("name,params", W4_CASES + [("w8a16", {})])
def test_grid_is_the_formats_rtn_bit_for_bit(name, params):
    fmt = get_format(name, **params)
    w = torch.randn(48, 128, generator=torch.Generator().manual_seed(1)) * 0.05
    w[3] = 0  # all-zero rows/groups take the s == 0 -> 1 branch
    w[5, :64] = 0
    w[7] = w[7].abs()  # all-positive groups: lo clamps to 0
    assert torch.equal(grid_for(fmt, "test").fake(w), fmt.dequantize(fmt.quantize(w)))


@pytest.mark.parametrize("name,params", W4_CASES)
def test_gptq_with_identity_hessian_is_rtn(name, params):
    """No correlations, no error to push anywhere: GPTQ must reduce to the format's RTN exactly."""
    fmt = get_format(name, **params)
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(2)) * 0.05
    deq, tensors = gptq_quantize(w, torch.eye(128), grid_for(fmt, "gptq"))
    expect = fmt.quantize(w)
    assert set(tensors) == set(expect)
    for k in expect:
        assert tensors[k].dtype == expect[k].dtype and torch.equal(tensors[k], expect[k]), k
    assert torch.equal(deq, fmt.dequantize(expect))


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("name,params", W4_CASES)
def test_gptq_beats_rtn_and_is_representable(name, params, act_order):
    fmt = get_format(name, **params)
    x, w = layer()
    h = 2 * x.T @ x / x.shape[0]
    deq, tensors = gptq_quantize(w, h, grid_for(fmt, "gptq"), GPTQConfig(act_order=act_order))
    assert torch.equal(fmt.dequantize(tensors), deq)  # what we measured is what the file says
    assert [tuple(t.shape) for t in tensors.values()] == [tuple(t.shape) for t in fmt.quantize(w).values()]
    assert out_err(x, w, deq) <= 0.7 * rtn_err(fmt, x, w)


@pytest.mark.parametrize("name,params", W4_CASES[:4])
def test_awq_beats_rtn(name, params):
    fmt = get_format(name, **params)
    grid = grid_for(fmt, "awq")
    x, w = layer()
    s = search_scale(x.abs().mean(0), [w], grid, linear_output(x))
    assert s[list(OUTLIERS)].min() > s.median()  # the outlier channels are the ones protected
    scaled = fmt.dequantize(fmt.quantize(w * s)) / s  # the model computes (x / s) @ Q(w s)^T
    assert out_err(x, w, scaled) <= 0.7 * rtn_err(fmt, x, w)
    clipped = search_clip(w * s, (x / s)[:512], grid)
    assert out_err(x, w, fmt.dequantize(fmt.quantize(clipped)) / s) <= out_err(x, w, scaled) * 1.001


def test_awq_grid_includes_plain_rtn():
    """Without outliers the search may pick s = 1 (a = 0): it is never worse than RTN on its sample."""
    fmt = get_format("w4a16", group_size=64)
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(512, 128, generator=g), torch.randn(64, 128, generator=g)
    s = search_scale(x.abs().mean(0), [w], grid_for(fmt, "awq"), linear_output(x))
    assert out_err(x, w, fmt.dequantize(fmt.quantize(w * s)) / s) <= rtn_err(fmt, x, w) * 1.0001


# e4m3 keeps relative precision per value, so outliers hurt it less: a smaller gain is expected.
@pytest.mark.parametrize("name,ratio", [("w8a8", 0.7), ("fp8", 0.9)])
def test_smoothquant_beats_plain_activation_quantization(name, ratio):
    fmt = get_format(name)
    x, w = layer()

    def err(s):
        return float((x @ w.T - fmt.linear(x / s, fmt.quantize(w * s))).norm())

    s = smooth_scales(x.abs().amax(0), [w], 0.5)
    assert err(s) <= ratio * err(torch.ones(w.shape[1]))


def test_smooth_scales_formula_and_dead_channels():
    xmax, w = torch.tensor([4.0, 0.0, 9.0]), torch.tensor([[1.0, 2.0, 0.0], [-0.25, 1.0, 0.0]])
    s = smooth_scales(xmax, [w], 0.5)
    torch.testing.assert_close(s, torch.tensor([4.0**0.5 / 1.0**0.5, 1.0, 1.0]))


def brute_force_clip(w, x, grid, n_grid=20, max_shrink=0.5):
    """search_clip's definition, spelled out: for every candidate range, fake-quantize and measure
    each group's output error directly on the tokens; keep the first best per (row, group)."""
    n, k = w.shape
    g = grid.group_of(k)
    wg = w.float().reshape(n, k // g, g)
    if grid.has_zero:
        hi0, lo0 = wg.amax(-1, keepdim=True).clamp(min=0), wg.amin(-1, keepdim=True).clamp(max=0)
    else:
        hi0 = wg.abs().amax(-1, keepdim=True)
        lo0 = -hi0
    steps = range(int(max_shrink * n_grid))
    best, best_err = wg.clone(), torch.full((n, k // g), float("inf"), dtype=torch.float64)
    for i in steps:
        for j in (steps if grid.has_zero else [i]):
            c = torch.minimum(torch.maximum(wg, lo0 * (1 - j / n_grid)), hi0 * (1 - i / n_grid))
            q = grid.fake(c.reshape(n, k)).reshape(wg.shape)
            y = torch.einsum("tgc,ngc->tng", x.double().reshape(-1, k // g, g), (q - wg).double())
            err = y.pow(2).mean(0)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better[..., None], c, best)
    return best.reshape(n, k)


@pytest.mark.parametrize(
    "name,params", [("w4a16", {"group_size": 64}), ("w4a16", {"group_size": 32, "sym": True}), ("w8a16", {})]
)
def test_search_clip_equals_brute_force(name, params):
    """The Gram-matrix shortcut picks the same ranges as measuring every candidate on the tokens."""
    fmt = get_format(name, **params)
    grid = grid_for(fmt, "awq")
    x, w = layer(seed=4, tokens=256, k=256, n=24)
    got, want = search_clip(w, x, grid), brute_force_clip(w, x, grid)
    same = (got == want).reshape(24, -1, grid.group_of(256)).all(-1).float().mean()
    assert same >= 0.98  # a near-tie may resolve the other way in float32
    assert out_err(x, w, grid.fake(got)) == pytest.approx(out_err(x, w, grid.fake(want)), rel=1e-3)


@pytest.mark.parametrize("name,params", W4_CASES[:2])
def test_gptq_static_groups_without_act_order(name, params):
    """Static groups alone: each group's (scale, zero) from the original weights, columns in order."""
    fmt = get_format(name, **params)
    x, w = layer(seed=3)
    h = 2 * x.T @ x / x.shape[0]
    deq, tensors = gptq_quantize(w, h, grid_for(fmt, "gptq"), GPTQConfig(act_order=False, static_groups=True))
    expect = fmt.quantize(w)  # RTN's scales are the original weights' scales
    scale = next(k for k in expect if "scale" in k)
    assert torch.equal(tensors[scale], expect[scale])
    assert torch.equal(fmt.dequantize(tensors), deq) and out_err(x, w, deq) <= 0.7 * rtn_err(fmt, x, w)
    assert GPTQConfig(static_groups=True).params()["static_groups"] is True
    assert GPTQConfig(act_order=True, static_groups=False).params()["static_groups"] is True  # implied


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_block_size_is_speed_only(act_order):
    """Lazy batch updates are exact algebra: the block size moves rounding noise, not the result."""
    fmt = get_format("w4a16", group_size=32)
    x, w = layer(seed=4)
    h = 2 * x.T @ x / x.shape[0]
    grid = grid_for(fmt, "gptq")
    a, _ = gptq_quantize(w, h, grid, GPTQConfig(act_order=act_order, blocksize=128))
    b, _ = gptq_quantize(w, h, grid, GPTQConfig(act_order=act_order, blocksize=32))
    assert (a == b).float().mean() > 0.999
    assert abs(out_err(x, w, a) - out_err(x, w, b)) <= 0.01 * out_err(x, w, a)
