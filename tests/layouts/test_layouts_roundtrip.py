"""pack/unpack: exact inverses, chunk-invariant, pure, padded as specified, strict about input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from layout_cases import FORMATS, PAIRS, assert_bit_equal, quantized, random_neutral, valid_k

from turbopack.errors import BadTensorError, ShapeError, TurbopackError
from turbopack.formats import get_format
from turbopack.layouts import get_layout


def _roundtrip(layout_name: str, fmt_key: str, n: int, k: int, seed: int) -> None:
    layout, fmt = get_layout(layout_name), FORMATS[fmt_key]
    q = random_neutral(fmt, n, k, seed)
    packed = layout.pack(fmt, q, (n, k))
    specs = {s.suffix: s for s in layout.packed_specs(fmt, (n, k))}
    assert set(packed) == set(specs)
    for suffix, t in packed.items():
        assert (t.dtype, tuple(t.shape)) == (specs[suffix].dtype, specs[suffix].shape), suffix
        assert t.is_contiguous()
    assert_bit_equal(layout.unpack(fmt, packed, (n, k)), q, f"{layout_name}/{fmt_key} {n}x{k}")


@settings(max_examples=150, deadline=None)
@given(pair=st.sampled_from(PAIRS), n=st.sampled_from([1, 7, 16, 17, 64, 65, 80]), kmul=st.integers(1, 5),
       seed=st.integers(0, 2**32 - 1))
def test_pack_unpack_identity(pair, n, kmul, seed):
    layout_name, fmt_key = pair
    fmt = FORMATS[fmt_key]
    # w4: K a multiple of the group (K=96 with g32 is not a multiple of the 64-wide tile);
    # byte formats: any K, including ones that are not a multiple of 8 or 16.
    k = getattr(fmt, "group_size", 0) * kmul or 13 * kmul + kmul % 2
    _roundtrip(layout_name, fmt_key, n, k, seed)


REAL_SHAPES = [(192, 576), (448, 1408), (17, 96), (1, 64)]
# (K=576 or 96 with group 128 is rejected by the format itself, so those pairs are not listed)
REAL_CASES = [(pair, shape) for pair in PAIRS for shape in REAL_SHAPES if valid_k(FORMATS[pair[1]], shape[1])]


@pytest.mark.parametrize(
    "pair,shape", REAL_CASES, ids=lambda c: f"{c[0]}-{c[1]}" if isinstance(c[0], str) else f"{c[0]}x{c[1]}"
)
def test_real_shapes(pair, shape):
    _roundtrip(*pair, *shape, seed=shape[0] * 7 + shape[1])


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
def test_chunked_pack_equals_whole(pair):
    layout, fmt = get_layout(pair[0]), FORMATS[pair[1]]
    n, k = 4 * layout.tile_n + 3, 128 if valid_k(fmt, 128) else 64
    q = random_neutral(fmt, n, k, seed=5)
    whole = layout.pack(fmt, q, (n, k))
    per_row = {s.suffix: s.per_row for s in layout.packed_specs(fmt, (n, k))}
    for max_rows in (layout.tile_n, 2 * layout.tile_n, 3 * layout.tile_n + 5):
        chunks = layout.row_chunks((n, k), max_rows)
        assert chunks[0][0] == 0 and chunks[-1][1] == n and all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
        parts = [
            layout.pack(fmt, {s: t[r0:r1] if t.shape[0] == n else t for s, t in q.items()}, (n, k)) for r0, r1 in chunks
        ]
        joined = {s: torch.cat([p[s] for p in parts]) if per_row[s] else parts[0][s] for s in whole}
        assert_bit_equal(joined, whole, f"chunks of {max_rows}")


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
def test_pack_and_unpack_are_pure(pair):
    layout, fmt = get_layout(pair[0]), FORMATS[pair[1]]
    n, k = layout.tile_n, 128  # no padding: the easiest case to alias input memory by accident
    q = random_neutral(fmt, n, k, seed=9)
    q_copy = {s: t.clone() for s, t in q.items()}
    packed = layout.pack(fmt, q, (n, k))
    assert_bit_equal(q, q_copy, "pack modified its input")
    packed_copy = {s: t.clone() for s, t in packed.items()}
    out = layout.unpack(fmt, packed, (n, k))
    assert_bit_equal(packed, packed_copy, "unpack modified its input")
    for t in list(packed.values()) + list(out.values()):  # outputs own their memory
        t.view(torch.uint8).fill_(0x55) if t.dtype.itemsize == 1 else t.view(torch.uint8).view(-1).fill_(0x55)
    assert_bit_equal(q, q_copy, "pack output aliases its input")
    assert_bit_equal(layout.unpack(fmt, packed_copy, (n, k)), q_copy, "unpack output aliases its input")


def _as_rows(layout, suffix: str, t: torch.Tensor) -> torch.Tensor:
    """A packed tensor back as [N_pad, columns] using only the spec's shapes (not unpack)."""
    if t.dtype.itemsize == 1:
        t = t.view(torch.uint8)
    if suffix in ("scales", "zeros") and t.dim() == 3:    # w4: [NT, K_pad/G, TN]
        return t.transpose(1, 2).reshape(-1, t.shape[1])
    if t.dim() == 4:                                      # tiles [NT, KT, TN, TK]
        return t.transpose(1, 2).reshape(t.shape[0] * t.shape[2], -1)
    if t.dim() == 3:                                      # row-major [N_pad/TN, TN, K_pad]
        return t.reshape(-1, t.shape[2])
    return t[:, None]                                     # per-channel scales [N_pad]


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
def test_padding_is_zero(pair):
    """Padded rows/columns hold code 0, scale 0 (and zero point 0), so padded weights (and outputs)
    are exactly 0."""
    layout, fmt = get_layout(pair[0]), FORMATS[pair[1]]
    # K padding exists for w4 only with g32 (K = 96 -> 128) and for the byte layouts (K = 40)
    n, k = layout.tile_n + 1, (96 if valid_k(fmt, 96) else 128) if hasattr(fmt, "group_size") else 40
    pad = layout.padding((n, k))
    assert pad.n_pad > n and (pad.k_pad > k or getattr(fmt, "group_size", 32) > 32)
    packed = layout.pack(fmt, random_neutral(fmt, n, k, seed=3), (n, k))
    per_col = {
        "qweight": 8 if fmt.name.value == "w4a16" else 1,
        "scales": getattr(fmt, "group_size", None),
        "zeros": getattr(fmt, "group_size", None),
    }
    for suffix, t in packed.items():
        if t.numel() == 1:
            continue  # per-tensor scale
        rows = _as_rows(layout, suffix, t)
        assert rows.shape[0] == pad.n_pad
        assert not rows[n:].float().any(), f"{suffix}: padded rows are not zero"
        if per_col[suffix] and rows.shape[1] > 1:
            assert not rows[:, k // per_col[suffix]:].float().any(), f"{suffix}: padded columns are not zero"
        assert rows[:n].float().any()


def test_asym_zero_points_are_stored_as_is():
    """Every zero point 0..15 is stored unchanged (uint8, same tiling as the scales) and comes
    back exactly, whatever the scales (subnormal to huge: nothing is folded on disk)."""
    layout = get_layout("w4_t16x64")
    for sd in ("bfloat16", "float16"):
        fmt = get_format("w4a16", group_size=32, sym=False, scale_dtype=sd)
        q = random_neutral(fmt, 16 * 40, 32, seed=11)
        q["zeros"] = (torch.arange(q["zeros"].numel()) % 16).to(torch.uint8).reshape(q["zeros"].shape)
        packed = layout.pack(fmt, q, (640, 32))
        assert packed["zeros"].dtype == torch.uint8
        assert torch.equal(
            packed["zeros"].transpose(1, 2).reshape(640, -1)[:, :1], q["zeros"]
        )  # (K_pad = 64: 2 groups)
        assert_bit_equal(layout.unpack(fmt, packed, (640, 32)), q, sd)


def test_fp16_scales_pack_at_any_magnitude_and_zeros_over_15_are_refused():
    """v1 folded -z*s into an fp16 tensor and had to refuse s > 4366; codes have no such limit.
    A zero point that is not a 4-bit code would break the kernels' exact fold: a clear error."""
    fmt = get_format("w4a16", group_size=32, sym=False, scale_dtype="float16")
    q = random_neutral(fmt, 16, 32, seed=1)
    q["scales"][0, 0], q["zeros"][0, 0] = 60000.0, 15
    layout = get_layout("w4_t16x64")
    assert_bit_equal(layout.unpack(fmt, layout.pack(fmt, q, (16, 32)), (16, 32)), q, "fp16 s=60000")
    q["zeros"][3, 0] = 16
    with pytest.raises(BadTensorError, match=r"zero points are 0\.\.15"):
        layout.pack(fmt, q, (16, 32))


def test_quantized_weights_roundtrip():
    """The format's real output (not just random codes) round-trips too."""
    for name, key in PAIRS:
        fmt = FORMATS[key]
        k = 256
        q = quantized(fmt, 40, k, seed=2)
        layout = get_layout(name)
        assert_bit_equal(layout.unpack(fmt, layout.pack(fmt, q, (40, k)), (40, k)), q, f"{name}/{key}")


def test_wrong_inputs_are_clear_errors():
    w4 = get_layout("w4_t16x64")
    fmt = FORMATS["w4-sym-g32-bflo"]
    q = random_neutral(fmt, 16, 64, seed=0)
    with pytest.raises(TurbopackError, match="holds w4a16, not w8a16"):
        w4.pack(FORMATS["w8a16"], random_neutral(FORMATS["w8a16"], 16, 64, 0), (16, 64))
    with pytest.raises(ShapeError, match=r"expected \[rows <= 16, 64\]"):
        w4.pack(fmt, q, (16, 128))
    with pytest.raises(ShapeError, match="not a multiple of group size"):
        w4.pack(FORMATS["w4-sym-g128-bflo"], q, (16, 64))
    packed = w4.pack(fmt, q, (16, 64))
    with pytest.raises(ShapeError, match="packed for another shape"):
        w4.unpack(fmt, packed, (32, 64))
    with pytest.raises(ShapeError, match="float32 scales"):
        get_layout("i8_rowmajor").pack(
            FORMATS["w8a8"],
            {"qweight": torch.zeros(8, 16, dtype=torch.int8), "scales": torch.ones(8, dtype=torch.float16)},
            (8, 16),
        )
