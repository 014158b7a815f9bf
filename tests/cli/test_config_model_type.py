"""A config.json without `architectures` but with a known `model_type` is read as transformers
reads it (AutoModelForCausalLM picks the class from model_type)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from turbopack.cli.app import main

ASSET = Path(__file__).resolve().parents[2] / "turbopack" / "assets" / "tiny-llama"


def _drop_architectures(folder: Path, value="absent") -> None:
    cfg = json.loads((folder / "config.json").read_text())
    if value == "absent":
        del cfg["architectures"]
    else:
        cfg["architectures"] = value
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_quantize_and_load_without_architectures(arch, tmp_path, capsys):
    from tinymodels import make_tiny_model

    from turbopack.inference.api import load

    with_arch = make_tiny_model(tmp_path / "a", arch=arch)
    without = tmp_path / "b"
    shutil.copytree(with_arch, without)
    _drop_architectures(without, "absent" if arch != "qwen2" else None)
    for src in (with_arch, without):
        assert main(["quantize", str(src), "-o", str(src.parent / f"{src.name}-w8"), "-f", "w8a16"]) == 0
    ids = torch.arange(12)[None] % 128
    logits = [load(tmp_path / f"{n}-w8", device="cpu").model(ids).float() for n in ("a", "b")]
    assert torch.equal(logits[0], logits[1])
    capsys.readouterr()


def test_run_bundled_model_without_architectures(tmp_path, capsys):
    folder = tmp_path / "m"
    shutil.copytree(ASSET, folder)
    _drop_architectures(folder, [])
    outs = []
    for src in (ASSET, folder):
        assert main(["run", str(src), "--prompt", "ROMEO:", "-n", "6", "--device", "cpu", "--json"]) == 0
        outs.append(json.loads(capsys.readouterr().out)["token_ids"])
    assert outs[0] == outs[1]


def test_neither_architectures_nor_model_type_is_one_line(tmp_path, capsys):
    folder = tmp_path / "m"
    shutil.copytree(ASSET, folder)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["architectures"], cfg["model_type"]
    (folder / "config.json").write_text(json.dumps(cfg))
    assert main(["quantize", str(folder), "-o", str(tmp_path / "q"), "-f", "w8a16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "neither architectures nor model_type" in err and "config.json" in err
    assert not (tmp_path / "q").exists()
