"""docs/interop.md's "Loading an export in transformers" section, run as written: its turbopack
commands through the CLI, its Python with transformers + compressed-tensors on the CPU; each
loaded weight equals our dequantization; and `turbopack export` prints the doc's line."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from turbopack.checkpoint.quantized import QuantizedCheckpoint
from turbopack.cli.app import main

ROOT = Path(__file__).resolve().parents[3]
pytest.importorskip("compressed_tensors")


def _section() -> tuple[list[str], list[str]]:
    doc = (ROOT / "docs" / "interop.md").read_text()
    body = doc.split("<!-- hf-load:begin -->")[1].split("<!-- hf-load:end -->")[0]
    bash = re.findall(r"```bash\n(.*?)```", body, re.S)
    py = re.findall(r"```python\n(.*?)```", body, re.S)
    return [line for block in bash for line in block.splitlines() if line.strip()], py


def test_doc_section_runs_as_written(tmp_path, monkeypatch, capsys):
    commands, blocks = _section()
    monkeypatch.chdir(ROOT)  # the doc's paths are relative to the repository root
    printed: dict[str, str] = {}
    for line in commands:
        argv = shlex.split(line)
        assert argv[0] == "turbopack"
        argv = [str(tmp_path / a) if a.startswith("tiny-") else a for a in argv[1:]]
        assert main(argv) == 0, line
        out = capsys.readouterr().out
        if argv[0] == "export":
            folder = Path(argv[argv.index("-o") + 1])
            printed[folder.name] = out.split("load in transformers: ", 1)[1].splitlines()[0]
            # a plain load's failure is announced exactly when the doc needs the dequantize line
            assert ("a plain from_pretrained fails" in out) == ("dequantize=True" in printed[folder.name])
    loaded = set()
    for block in blocks:
        ns: dict = {}
        for line in block.splitlines():
            m = re.search(r'from_pretrained\("([^"]+)"', line)
            if m is None:
                exec(line, ns)  # noqa: S102 - the doc's imports
                continue
            name = m.group(1)
            line = line.replace(f'"{name}"', f'"{tmp_path / name}"')
            assert printed[name] == line, "export prints the doc's line"
            exec(line, ns)  # noqa: S102
            _check_weights(ns["model"], tmp_path / name)
            loaded.add(name)
    assert loaded == set(printed), "every export in the doc is loaded by the doc"


def _check_weights(model, export_folder: Path) -> None:
    """Dense weights (a decompressed load) equal our dequantization; a plain load keeps the
    compressed tensors (scales cast to the model dtype), so its logits are compared with ours."""
    from turbopack.inference.api import load

    src = export_folder.parent / export_folder.name.removesuffix("-ct")
    ours = QuantizedCheckpoint(src)
    for name in ours.modules:
        lin = model.get_submodule(name)
        if (
            getattr(lin, "weight", None) is not None
            and lin.weight.is_floating_point()
            and lin.weight.element_size() > 1
        ):
            mod = ours.module(name)
            want = mod.dequantize().to(mod.tensors["scales"].dtype).to(lin.weight.dtype)
            assert torch.equal(lin.weight, want), f"{export_folder.name}: {name}"
    ids = torch.arange(1, 65)[None] * 31 % 2048
    with torch.no_grad():
        got = model(ids).logits.float()[0]
        ref = load(src, device="cpu").model(ids).float()[0]
    rel = float((got - ref).norm() / ref.norm())
    top1 = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
    assert rel < 0.03 and top1 >= 0.9, f"{export_folder.name}: logits rel err {rel:.4f}, top-1 {top1:.2f}"
