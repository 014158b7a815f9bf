"""`turbopack pack | verify | inspect` through the CLI entry point: exit codes (0 ok, 1 failed check,
2 bad input), results on stdout, --json, --explain, one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packer"))
from packhelp import model_dir, needs_layouts, quantized, temp_leftovers  # noqa: E402,F401

from turbopack.cli.app import main  # noqa: E402

pytestmark = needs_layouts


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_help_has_examples_and_says_where_archs_go(capsys):
    for cmd in ("pack", "verify", "inspect"):
        rc, out, _ = run(capsys, cmd, "--help")
        assert rc == 0 and f"turbopack {cmd} " in out
    rc, out, _ = run(capsys, "pack", "--help")
    assert "OUT/sm80" in out and "rank0" in out


def test_pack_explain_verify_inspect(capsys, quantized, tmp_path):
    from turbopack.checkpoint.quantized import QuantizedCheckpoint

    src = quantized("base", "w4a16", {"group_size": 32})
    out = tmp_path / "p"
    rc, stdout, _ = run(capsys, "pack", src, "--arch", "sm80", "--arch", "sm90", "-o", out, "--explain")
    assert rc == 0 and (out / "sm80" / "turbopack.json").exists() and (out / "sm90" / "turbopack.json").exists()
    for module in QuantizedCheckpoint(src).modules:
        assert module in stdout
    assert "w4_t16x64" in stdout and "w4_t64x64" in stdout and "k 96→128" in stdout
    rc, stdout, _ = run(capsys, "verify", out, "--against", src)
    assert rc == 0 and stdout.count("ok ") == 2
    rc, stdout, _ = run(capsys, "verify", out, "--json")
    assert rc == 0 and json.loads(stdout)["ok"] is True
    rc, stdout, _ = run(capsys, "inspect", out / "sm90", "--json")
    data = json.loads(stdout)
    assert rc == 0 and data["kind"] == "packed" and data["arch"] == "sm90" and data["compression_vs_bf16"] > 1.5
    rc, stdout, _ = run(capsys, "inspect", out)
    assert rc == 0 and "sm80" in stdout and "sm90" in stdout and "compression" in stdout


def test_pack_json_carries_the_explain_rows(capsys, quantized, tmp_path):
    src = quantized("base", "w8a8", {})
    rc, stdout, _ = run(capsys, "pack", src, "--arch", "sm90", "-o", tmp_path / "p", "--json")
    data = json.loads(stdout)
    assert rc == 0 and data["modules"] == 14 and len(data["explain"]) == 14
    assert {"module", "shape", "format", "layout", "padding", "kernel", "why"} <= data["explain"][0].keys()


def test_flipped_byte_exits_1_naming_the_shard(capsys, quantized, tmp_path):
    src = quantized("base", "fp8", {})
    out = tmp_path / "p"
    assert run(capsys, "pack", src, "--arch", "sm90", "--tp", "2", "-o", out)[0] == 0
    shard = out / "rank1" / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    rc, stdout, _ = run(capsys, "verify", out)
    assert rc == 1 and "FAIL" in stdout and str(shard) in stdout and "sha256" in stdout
    assert "ok   " + str(out / "rank0") in stdout


def test_bad_input_exits_2_and_writes_nothing(capsys, model_dir, quantized, tmp_path):
    out = tmp_path / "p"
    src, hf = quantized("tp", "w4a16", {"group_size": 64}), model_dir("base")
    capsys.readouterr()  # building the fixtures prints progress
    rc, _, err = run(capsys, "pack", src, "--arch", "sm90", "--tp", "2", "-o", out)
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "mlp.down_proj" in err and "[32]" in err
    rc, _, err = run(capsys, "pack", quantized("base", "w8a16", {}), "--arch", "sm99", "-o", out)
    assert rc == 2 and "sm99" in err and "sm90" in err
    rc, _, err = run(capsys, "pack", hf, "--arch", "sm90", "-o", out)
    assert rc == 2 and "--format" in err
    assert not out.exists() and temp_leftovers(tmp_path) == []


def test_pack_quantizes_an_hf_model_on_the_way(capsys, model_dir, tmp_path):
    out = tmp_path / "p"
    rc, _, _ = run(capsys, "pack", model_dir("base"), "--format", "w4a16", "--group-size", "32", "--sym",
                   "--arch", "sm80", "-o", out)
    assert rc == 0
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "w4a16" and qc["sym"] is True and qc["packed"] is True and qc["arch"] == "sm80"


def test_inspect_layout_diagram(capsys, quantized, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "tile.png"
    rc, stdout, _ = run(capsys, "inspect", quantized("base", "w8a16", {}), "--layout-diagram", png, "--arch", "sm80")
    assert rc == 0 and png.read_bytes()[:4] == b"\x89PNG" and str(png) in stdout


def test_pack_from_float_takes_the_library_format_options(capsys, model_dir, tmp_path):
    """`pack --format` accepts what turbopack.pack accepts (--ignore, --scale-dtype, --include-lm-head)
    and writes the same bytes as the library call."""
    from turbopack.packer.pack import pack

    src = model_dir("base")
    flags = ["--ignore", "model.layers.0.*", "--scale-dtype", "float16", "--include-lm-head"]
    rc, _, err = run(capsys, "pack", src, "-f", "w4a16", "-g", "32", *flags, "--arch", "sm90", "-o", tmp_path / "cli")
    assert rc == 0, err
    pack(src, tmp_path / "lib", ("sm90",), format="w4a16", group_size=32, ignore=("model.layers.0.*",),
         scale_dtype="float16", include_lm_head=True, progress=False)
    qc = json.loads((tmp_path / "cli" / "config.json").read_text())["quantization_config"]
    assert qc["scale_dtype"] == "float16" and qc["lm_head"] is True
    assert any(n.startswith("model.layers.0.") for n in qc["ignore"])
    for f in (tmp_path / "lib").iterdir():
        assert (tmp_path / "cli" / f.name).read_bytes() == f.read_bytes(), f.name
