"""`inspect` on every kind of folder, and the layout diagram's measured map of a tile."""

from __future__ import annotations

import sys

import pytest
from packhelp import model_dir, needs_layouts, quantized  # noqa: F401

from turbopack.errors import TurbopackError
from turbopack.packer.inspect import inspect


def test_hf_and_quantized_folders(model_dir, quantized):
    (hf,) = inspect(model_dir("base"))
    assert hf.kind == "hf" and hf.formats == ["bfloat16"] and hf.ratio == pytest.approx(1.0)
    assert any(r["name"] == "model.layers.0.mlp.down_proj.weight" and r["shape"] == [64, 96] for r in hf.rows)
    (q,) = inspect(quantized("base", "w4a16", {"group_size": 32}))
    assert q.kind == "quantized" and q.formats == ["w4a16(group_size=32,sym=False,scale_dtype=bfloat16)"]
    down = next(r for r in q.rows if r["name"] == "model.layers.0.mlp.down_proj")
    assert (
        down["shape"] == [64, 96] and down["bytes"] == 64 * 48 + 64 * 3 * 2 + 64 * 3
    )  # qweight, bf16 scales, uint8 zeros
    assert q.total_bytes == sum(r["bytes"] for r in q.rows) and 1.5 < q.ratio < 4
    assert q.bf16_bytes == hf.bf16_bytes  # same parameters


@needs_layouts
def test_packed_multi_arch_and_tp(quantized, tmp_path):
    from turbopack.packer.pack import pack

    pack(quantized("tp", "w8a16", {}), tmp_path / "p", arch=("sm80", "sm90"), tp=2, progress=False)
    reports = inspect(tmp_path / "p")
    assert [(r.arch, r.rank, r.tp) for r in reports] == [("sm80", 0, 2), ("sm80", 1, 2), ("sm90", 0, 2), ("sm90", 1, 2)]
    row = next(r for r in reports[2].rows if r["name"] == "model.layers.0.self_attn.q_proj")
    assert row["layout"] == "i8_t64x64 v1" and row["shape"] == [32, 64]
    assert reports[0].as_dict()["kind"] == "packed"


@needs_layouts
def test_tile_map_matches_the_documented_w4_and_rowmajor_orders():
    from turbopack.formats import get_format
    from turbopack.layouts import get_layout
    from turbopack.layouts.w4 import NIBBLE_OF_ELEMENT
    from turbopack.packer.diagram import tile_map

    tm = tile_map(get_layout("w4_t16x64"), get_format("w4a16", group_size=32))
    assert tm.shape == (16, 64) and tm.unit_bits == 4
    for n, k in ((0, 0), (0, 1), (3, 17), (15, 63)):  # row r: 8 words; word j holds k = 8j..8j+7
        assert int(tm.word[n, k]) == n * 8 + k // 8 and int(tm.lane[n, k]) == NIBBLE_OF_ELEMENT[k % 8]
    assert len(set(tm.slot.flatten().tolist())) == 16 * 64 and int(tm.slot.min()) >= 0
    rm = tile_map(get_layout("i8_rowmajor"), get_format("w8a8"))
    assert rm.unit_bits == 8 and int(rm.slot[3, 5]) == 3 * rm.shape[1] + 5


@needs_layouts
def test_layout_diagram_png(model_dir, quantized, tmp_path):
    pytest.importorskip("matplotlib")
    from turbopack.packer.diagram import draw
    from turbopack.packer.inspect import diagram_subject

    layout, fmt, label = diagram_subject(quantized("base", "w4a16", {"group_size": 32}), "sm90")
    assert layout.name.value == "w4_t64x64" and "sm90" in label
    png = draw(tmp_path / "tile.png", layout, fmt, label)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with pytest.raises(TurbopackError, match="unquantized"):
        diagram_subject(model_dir("base"), "sm90")


@needs_layouts
def test_layout_diagram_without_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    from turbopack.formats import get_format
    from turbopack.layouts import get_layout
    from turbopack.packer.diagram import draw

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    with pytest.raises(TurbopackError, match=r"pip install turbopack\[diagram\]"):
        draw(tmp_path / "x.png", get_layout("w4_t16x64"), get_format("w4a16", group_size=32))
    assert not (tmp_path / "x.png").exists()
