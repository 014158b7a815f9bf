"""The convert / export / upload commands: results on stdout (--json), exit 0 / 2, one error line."""

from __future__ import annotations

import json

from foreign import write_gptq

from turbopack.cli.app import main


def test_convert_export_cli(tiny_llama, tmp_path, capsys):
    write_gptq(tiny_llama, tmp_path / "gptq", group=32)
    assert main(["convert", str(tmp_path / "gptq"), "-o", str(tmp_path / "w4"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["from"] == "gptq" and d["quantized"] == 14 and d["format"].startswith("w4a16(group_size=32")
    assert main(["export", str(tmp_path / "w4"), "--to", "compressed-tensors", "-o", str(tmp_path / "ct")]) == 0
    assert "as compressed-tensors, 14 modules, ignore=['lm_head']" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "w4"), "--to", "compressed-tensors", "-o", str(tmp_path / "ct")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists; pass --force" in err
    assert main(["convert", str(tmp_path / "nowhere"), "-o", str(tmp_path / "z")]) == 2
    assert "no such model folder" in capsys.readouterr().err
    assert main(["upload", str(tmp_path / "ct"), "--repo-id", "org/tiny-ct", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["card"] == "generated" and "vllm serve org/tiny-ct" in plan["card_text"]
    assert {f["path"] for f in plan["files"]} == {
        "config.json",
        "model.safetensors",
        "turbopack.json",
        "generation_config.json",
    }
