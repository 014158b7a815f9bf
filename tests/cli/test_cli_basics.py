"""The CLI layer: every command has an example in --help; exit codes 0 / 2; results on stdout,
errors as one line on stderr."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from turbopack.cli.app import COMMAND_MODULES, app, main


def registered_commands() -> list[str]:
    return [c.name for c in app.registered_commands]


def test_commands_registered():
    assert registered_commands() == list(COMMAND_MODULES)


@pytest.mark.parametrize("command", sorted(COMMAND_MODULES))
def test_help_has_examples(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Example" in out and f"turbopack {command}" in out


def test_quantize_ok_and_json(tiny_llama, tmp_path, capsys):
    assert main(["quantize", str(tiny_llama), "-o", str(tmp_path / "q"), "--format", "w8a16", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["quantized"] == 14 and data["format"] == "w8a16()"


def test_bad_input_is_one_line_exit_2(tiny_llama, tmp_path, capsys):
    rc = main(["quantize", str(tiny_llama), "-o", str(tmp_path / "q"), "--format", "w4a16", "-g", "128"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: model.safetensors:model.layers.0.mlp.down_proj.weight: K=96")
    assert not (tmp_path / "q").exists()


def test_unknown_option_exit_2(capsys):
    assert main(["quantize", "--no-such-flag"]) == 2
    assert main(["no-such-command"]) == 2


@pytest.mark.parametrize("args,err", [
    (["--shapes", "qkv,mlp"], "error: unknown shape 'mlp'; registered: qkv, o, gate_up, down"),
    (["--model", "llama2"], "error: unknown model 'llama2'; registered: llama3-8b, qwen3-8b, gemma2-9b, phi4-mini"),
    (["--formats", "w4a16,int3"],
     "error: unknown format 'int3'; registered: w4a16, nvfp4, w8a16, w8a8, fp8, fp8_upcast"),
    (["--ms", "1,0"], "error: --ms takes positive integers, got '1,0'"),
])
def test_bench_bad_names_are_one_line_exit_2(args, err, capsys):
    """Checked before the benchmark looks for a GPU: the same answer on any machine."""
    assert main(["bench", *args]) == 2
    assert capsys.readouterr().err.strip() == err


def test_console_script_exit_code(tiny_llama, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "turbopack.cli.app", "quantize", str(tiny_llama), "-o",
                           str(tmp_path / "q"), "--format", "w5"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown format 'w5'; registered: fp8, nvfp4, w4a16, w8a16, w8a8"
    assert "Traceback" not in proc.stderr


def test_cli_reference_is_generated_for_every_command():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    for command in COMMAND_MODULES:
        assert f"## `turbopack {command}`" in doc, f"docs/cli.md is stale: run scripts/gen_cli_docs.sh ({command})"
