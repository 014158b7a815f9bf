"""Bad config.json: missing, not JSON, unknown architecture, dims that disagree with the weights.
All refused at the start (before any tensor is read) by quantize, and by pack --format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from robusthelp import refused, src  # noqa: F401


def quantize_argv(model: Path, out: Path) -> list:
    return ["quantize", model, "-o", out, "-f", "w8a16"]


def _edit_config(src: Path, **changes) -> None:
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(changes)
    (src / "config.json").write_text(json.dumps(cfg))


def test_config_missing(capsys, src, tmp_path):
    (src / "config.json").unlink()
    refused(capsys, quantize_argv(src, tmp_path / "out"), src, tmp_path / "out",
            "config.json: missing", "copy it from the original model")


def test_config_not_json(capsys, src, tmp_path):
    (src / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], hidden_size: 64')
    refused(capsys, quantize_argv(src, tmp_path / "out"), src, tmp_path / "out",
            "config.json: not valid JSON", "fix or re-download it")


def test_config_not_an_object(capsys, src, tmp_path):
    (src / "config.json").write_text("[]")
    refused(capsys, quantize_argv(src, tmp_path / "out"), src, tmp_path / "out",
            "config.json: expected a JSON object", "fix or re-download it")


def test_unknown_architecture(capsys, src, tmp_path):
    _edit_config(src, architectures=["GPT2LMHeadModel"])
    refused(
        capsys,
        quantize_argv(src, tmp_path / "out"),
        src,
        tmp_path / "out",
        "config.json",
        "GPT2LMHeadModel is not supported",
        "supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM",
    )


def test_architectures_not_a_list(capsys, src, tmp_path):
    _edit_config(src, architectures="LlamaForCausalLM")
    refused(capsys, quantize_argv(src, tmp_path / "out"), src, tmp_path / "out",
            "config.json", "expected a list such as", "fix config.json")


@pytest.mark.parametrize(
    "changes,expect",
    [
        (
            {"hidden_size": 128},
            "hidden_size=128, intermediate_size=96 make model.layers.0.mlp.down_proj.weight [128, 96], "
            "but it is [64, 96] in model.safetensors",
        ),
        (
            {"intermediate_size": 128},
            "hidden_size=64, intermediate_size=128 make model.layers.0.mlp.down_proj.weight [64, 128], "
            "but it is [64, 96]",
        ),
        (
            {"num_key_value_heads": 4},
            "num_key_value_heads=4, head_dim=16, hidden_size=64 make model.layers.0.self_attn.k_proj.weight [64, 64], "
            "but it is [32, 64]",
        ),
        ({"num_hidden_layers": 1}, "num_hidden_layers=1 but model.layers.1."),
    ],
    ids=["hidden", "intermediate", "kv-heads", "layers"],
)
def test_dims_inconsistent_with_weights(capsys, src, tmp_path, changes, expect):
    _edit_config(src, **changes)
    refused(capsys, quantize_argv(src, tmp_path / "out"), src, tmp_path / "out",
            "config.json", expect, "config.json does not belong to these weights; fix it or re-download the model")


def test_dims_of_a_smaller_model(capsys, tiny_llama, tmp_path):
    """config says hidden 64, the weights are a hidden-32 model's (q_proj 32x32): caught from the headers alone."""
    from tinymodels import make_tiny_model

    small = make_tiny_model(tmp_path / "small", hidden_size=32, num_attention_heads=2, num_key_value_heads=1)
    cfg = json.loads((tiny_llama / "config.json").read_text())
    (small / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()  # transformers' progress bar from writing the model
    refused(capsys, quantize_argv(small, tmp_path / "out"), small, tmp_path / "out",
            "hidden_size=64", "but it is [32, 96]", "does not belong to these weights")


def test_dims_inconsistent_pack_format(capsys, src, tmp_path):
    """pack --format quantizes on the fly: the same check, before anything is written."""
    _edit_config(src, hidden_size=128)
    refused(capsys, ["pack", src, "--format", "w8a16", "--arch", "sm90", "-o", tmp_path / "out"], src, tmp_path / "out",
            "hidden_size=128", "does not belong to these weights")


@pytest.mark.parametrize("value", ["64", -64, None, 64.0, True], ids=["str", "negative", "null", "float", "bool"])
def test_dim_not_a_positive_integer(capsys, src, tmp_path, value):
    _edit_config(src, hidden_size=value)
    refused(capsys, quantize_argv(src, tmp_path / "out"), src, tmp_path / "out",
            "config.json: hidden_size is", "not a positive integer", "fix config.json")
