"""--k-fallback: int4 layers whose K the group size does not divide, by explicit choice."""

from __future__ import annotations

import json

import pytest
import torch

from turbopack.checkpoint.quantized import QuantizedCheckpoint
from turbopack.cli.app import main
from turbopack.formats import format_from_params

DOWN = "model.layers.0.mlp.down_proj"


def test_refusal_names_the_choices(tiny_llama, tmp_path, capsys):
    """tiny_llama's down_proj has K=96: -g 64 does not divide it."""
    assert main(["quantize", str(tiny_llama), "-o", str(tmp_path / "q"), "-f", "w4a16", "-g", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{DOWN}.weight: K=96" in err
    assert "--k-fallback group" in err and "--k-fallback w8" in err and "--ignore" in err
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("choice,want", [("group", {"format": "w4a16", "group_size": 32}), ("w8", {"format": "w8a16"})])
def test_fallback_layers_only(tiny_llama, tmp_path, capsys, choice, want):
    out = tmp_path / "q"
    assert main(["quantize", str(tiny_llama), "-o", str(out), "-f", "w4a16", "-g", "64", "--k-fallback", choice]) == 0
    capsys.readouterr()
    manifest = json.loads((out / "turbopack.json").read_text())
    fmts = {m: i["format"] for m, i in manifest["tensors"].items()}
    moved = {m for m, f in fmts.items() if f["format"] != "w4a16" or f.get("group_size") != 64}
    assert moved == {f"model.layers.{i}.mlp.down_proj" for i in range(2)}
    assert all(fmts[m].items() >= want.items() for m in moved)
    # each module dequantizes within its own format's bound, and the model runs through pack + load
    qc = QuantizedCheckpoint(out)
    from safetensors.torch import load_file

    src = load_file(str(tiny_llama / "model.safetensors"))
    for m in qc.modules:
        mod = qc.module(m)
        w = src[f"{m}.weight"].float()
        assert (mod.dequantize() - w).abs().max() <= mod.tensors["scales"].float().max() * 0.6, m
        assert mod.format == format_from_params(fmts[m])
    assert main(["pack", str(out), "--arch", "sm90", "-o", str(tmp_path / "p")]) == 0
    assert main(["verify", str(tmp_path / "p"), "--against", str(out)]) == 0
    from turbopack.inference.api import load

    ids = torch.arange(10)[None]
    a = load(out, device="cpu").model(ids).float()
    b = load(tmp_path / "p", device="cpu").model(ids).float()
    assert torch.isfinite(a).all() and float((a - b).norm() / a.norm()) < 1e-2
    capsys.readouterr()


def test_bad_choice_and_calibrated_are_refused(tiny_llama, tmp_path, capsys):
    assert (
        main(["quantize", str(tiny_llama), "-o", str(tmp_path / "q"), "-f", "w4a16", "-g", "64", "--k-fallback", "w3"])
        == 2
    )
    assert "--k-fallback 'w3': use one of refuse, group, w8" in capsys.readouterr().err
