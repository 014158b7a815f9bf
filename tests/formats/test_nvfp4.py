"""NVFP4: a plain per-element reference of docs/formats.md, compressed-tensors' own quantizer and
dequantizer (when installed) bit for bit, and the frozen bytes of one small weight."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from turbopack.errors import ShapeError
from turbopack.formats import format_from_params, get_format
from turbopack.formats.nvfp4 import E2M1_VALUES, e2m1_codes

GOLDEN = Path(__file__).parent / "golden" / "nvfp4.safetensors"
FMT = get_format("nvfp4")
#: every finite e4m3 value, by code (0x00-0x7E), for a by-hand round-to-nearest-even
E4M3 = torch.arange(127, dtype=torch.uint8).view(torch.float8_e4m3fn).float().numpy()


def _weight(n: int, k: int, seed: int) -> torch.Tensor:
    """Random rows over a wide range, outliers, a zero block, a block of tiny negatives, exact
    e2m1 ties and a -0.0."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.02
    w[torch.rand(n, k, generator=g) < 0.03] *= 30
    w[0, :16] = 0
    w[1, 16:32] = -1e-30
    w[2, 5] = -0.0
    return w


def _rne_e4m3(v: np.float32) -> np.float32:
    """Nearest finite e4m3 value, ties to the even code, saturating at 448."""
    if v >= 448:
        return np.float32(448)
    d = np.abs(E4M3 - v)
    best = np.flatnonzero(d == d.min())
    return E4M3[best[0] if len(best) == 1 or best[0] % 2 == 0 else best[1]]


def _rne_e2m1(x: np.float32) -> int:
    a = min(abs(float(x)), 6.0)
    d = [abs(a - v) for v in E2M1_VALUES]
    best = [i for i, di in enumerate(d) if di == min(d)]
    idx = best[0] if len(best) == 1 or best[0] % 2 == 0 else best[1]
    return idx | (8 if x < 0 else 0)


def _reference(w: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """docs/formats.md, element by element in numpy float32 (slow, obviously right)."""
    wn = w.numpy().astype(np.float32)
    n, k = wn.shape
    amax = np.float32(np.abs(wn).max())
    gs = np.float32(np.float32(1) / amax) * np.float32(2688) if amax > 0 else np.float32(1)
    codes = np.zeros((n, k), np.uint8)
    scales = np.zeros((n, k // 16), np.float32)
    for r in range(n):
        for b in range(k // 16):
            blk = wn[r, 16 * b:16 * b + 16]
            s = _rne_e4m3(np.float32(gs * np.float32(np.abs(blk).max() / np.float32(6))))
            s = s if s != 0 else np.float32(0.125)
            eff = np.float32(s / gs)
            codes[r, 16 * b:16 * b + 16] = [_rne_e2m1(np.float32(v / eff)) for v in blk]
            scales[r, b] = s
    return codes, scales, gs


def test_quantize_matches_the_plain_reference():
    w = _weight(6, 64, seed=3)
    w[3, :16] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.5, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5,
                              -5.0, -6.5]) * 8   # one block across the whole e2m1 range
    q = FMT.quantize(w, FMT.tensor_stats([w]))
    codes, scales, gs = _reference(w)
    assert np.array_equal(FMT.codes(q).numpy(), codes)
    assert np.array_equal(q["scales"].float().numpy(), scales) and q["scales"].dtype == torch.float8_e4m3fn
    assert q["global_scale"].item() == gs and q["global_scale"].dtype == torch.float32
    deq = np.array([[E2M1_VALUES[c & 7] * (-1 if c & 8 else 1) for c in row] for row in codes], np.float32)
    eff = (scales / gs).astype(np.float32).repeat(16, axis=1)
    assert np.array_equal(FMT.dequantize(q).numpy(), (deq * eff).astype(np.float32))


def test_e2m1_rounding_ties_go_to_the_even_code():
    x = torch.tensor([0.25, 0.7499, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.01, 7.0, -0.1, -0.0, 0.0, -5.0])
    assert e2m1_codes(x).tolist() == [0, 1, 2, 2, 4, 4, 6, 6, 7, 7, 8, 0, 0, 14]


def test_global_scale_spans_the_tensor_and_chunks_agree():
    """Row chunks quantized with the whole tensor's stats give the whole tensor's bytes."""
    w = _weight(40, 96, seed=5)
    stats = FMT.tensor_stats([w[:17], w[17:]])
    whole = FMT.quantize(w, stats)
    parts = [FMT.quantize(w[a:b], stats) for a, b in ((0, 17), (17, 40))]
    assert torch.equal(torch.cat([p["qweight"] for p in parts]), whole["qweight"])
    assert torch.equal(torch.cat([p["scales"] for p in parts]).view(torch.uint8), whole["scales"].view(torch.uint8))
    assert all(torch.equal(p["global_scale"], whole["global_scale"]) for p in parts)
    assert FMT.quantize(torch.zeros(4, 32))["global_scale"].item() == 1.0  # an all-zero tensor


def test_specs_shape_and_params():
    assert [(s.suffix, s.dtype, s.shape, s.per_row) for s in FMT.specs((8, 64))] == [
        ("qweight", torch.uint8, (8, 32), True), ("scales", torch.float8_e4m3fn, (8, 4), True),
        ("global_scale", torch.float32, (1,), False)]
    assert FMT.bits_per_weight((4096, 4096)) == 4.5 + 32 / 4096**2
    assert format_from_params(FMT.params()) == FMT and FMT.params() == {"format": "nvfp4"}
    with pytest.raises(ShapeError, match="x.weight: K=40 is not a multiple of 16"):
        FMT.check_shape("x.weight", (8, 40))


def test_matches_compressed_tensors_bit_for_bit():
    """compressed-tensors' NVFP4A16 observer math, quantize+pack and dequantize, on float32 weights."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.nvfp4.helpers import quantize_and_pack_fp4, unpack_fp4_from_uint8
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    from compressed_tensors.quantization.quant_scheme import NVFP4A16
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    args = NVFP4A16["weights"]
    for seed in range(4):
        n, k = 19, 96
        w = _weight(n, k, seed) * 10.0 ** (2 * seed - 3)
        gs = generate_gparam(w.amin(), w.amax())
        wg = w.reshape(n, k // 16, 16)
        s, _ = calculate_qparams(wg.amin(-1), wg.amax(-1), args, global_scale=gs)
        packed = quantize_and_pack_fp4(w, s, global_scale=gs, group_size=16)
        q = FMT.quantize(w, FMT.tensor_stats([w]))
        assert torch.equal(q["global_scale"], gs)
        assert torch.equal(q["scales"].view(torch.uint8), s.to(torch.float8_e4m3fn).view(torch.uint8))
        assert torch.equal(q["qweight"], packed)
        x_q = unpack_fp4_from_uint8(packed, n, k, dtype=torch.float32)
        theirs = dequantize(x_q, q["scales"].float(), args=args, global_scale=gs, dtype=torch.float32)
        assert torch.equal(theirs, FMT.dequantize(q))


def test_golden_bytes():
    """The on-disk bytes of one small weight are frozen (regenerate with TURBOPACK_REGEN_GOLDEN=1
    only after an intended format change, said in docs/formats.md)."""
    if os.environ.get("TURBOPACK_REGEN_GOLDEN") == "1":
        w = _weight(24, 64, seed=11)
        q = FMT.quantize(w, FMT.tensor_stats([w]))
        GOLDEN.parent.mkdir(exist_ok=True)
        save_file({"in.weight": w, **{f"out.{s}": t for s, t in q.items()}}, str(GOLDEN))
    stored = load_file(str(GOLDEN))
    w = stored["in.weight"]
    q = FMT.quantize(w, FMT.tensor_stats([w]))
    for suffix in ("qweight", "scales", "global_scale"):
        want = stored[f"out.{suffix}"]
        assert q[suffix].dtype == want.dtype and torch.equal(q[suffix].view(torch.uint8), want.view(torch.uint8))
    # and the first bytes by hand: code of column 0 in the low nibble, column 1 in the high one
    codes = FMT.codes(q)
    assert int(q["qweight"][5, 3]) == int(codes[5, 6]) | int(codes[5, 7]) << 4
