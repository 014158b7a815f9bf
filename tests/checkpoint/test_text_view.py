"""A multimodal checkpoint (Gemma 3 4B/12B/27B: Gemma3ForConditionalGeneration) is read as its
text model: a complete Gemma3ForCausalLM config from the sparse text_config, the decoder's
tensors under causal-LM names from either naming scheme, the vision tower left out and said so."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tinymodels import make_tiny_model

from turbopack.checkpoint import Checkpoint
from turbopack.checkpoint.text_view import GEMMA3
from turbopack.errors import CheckpointError
from turbopack.inference.config import ModelConfig

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gemma3_mm(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("g3") / "mm", arch="gemma3_mm", num_hidden_layers=3)


def _tensors(folder) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _rewrite(src, dst, rename) -> None:
    """``src``'s folder with its tensors renamed by ``rename`` (the config copied)."""
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    save_file({rename(k): v for k, v in _tensors(src).items()}, str(dst / "model.safetensors"))


def test_view_is_the_text_model_under_causal_lm_names(gemma3_mm):
    ckpt = Checkpoint.open(gemma3_mm)
    files = _tensors(gemma3_mm)
    assert ckpt.config["architectures"] == ["Gemma3ForCausalLM"] and ckpt.config["model_type"] == "gemma3_text"
    assert all(n.startswith("model.") for n in ckpt.tensors) and "model.layers.2.mlp.down_proj.weight" in ckpt.tensors
    left = [k for k in files if not k.startswith("language_model.")]
    assert left and all(k.startswith(("vision_tower.", "multi_modal_projector.")) for k in left)
    assert len(ckpt.tensors) == len(files) - len(left)
    assert f"{len(left)} tensors (the vision tower and projector) are left out" in ckpt.note
    name = "model.layers.1.self_attn.q_proj.weight"
    assert ckpt.file_name(name) == "language_model." + name
    assert torch.equal(ckpt.read(name), files["language_model." + name])
    assert torch.equal(ckpt.read_rows(name, 3, 9), files["language_model." + name][3:9])


def test_both_naming_schemes_read_the_same(gemma3_mm, tmp_path):
    # transformers 4.5x wrote language_model.model.* (the Hub's files); 5.x's conversion names
    # model.language_model.*, model.vision_tower.*, and lm_head.* at the top
    def new_style(k: str) -> str:
        return k.replace("language_model.model.", "model.language_model.", 1) if k.startswith("language_model.") \
            else "model." + k

    _rewrite(gemma3_mm, tmp_path / "new", new_style)
    old, new = Checkpoint.open(gemma3_mm), Checkpoint.open(tmp_path / "new")
    assert set(old.tensors) == set(new.tensors) and old.config == new.config
    for n in old.tensors:
        assert torch.equal(old.read(n), new.read(n)), n
    both = tmp_path / "both"  # one tensor under both schemes: which is the text model's is unclear
    _rewrite(gemma3_mm, both, lambda k: k)
    t = _tensors(both)
    t["model.language_model.embed_tokens.weight"] = t["language_model.model.embed_tokens.weight"].clone()
    save_file(t, str(both / "model.safetensors"))
    with pytest.raises(CheckpointError, match="both the text model's model.embed_tokens.weight; the checkpoint "
                                              "mixes two naming schemes"):
        Checkpoint.open(both)


def test_sparse_text_config_gets_gemma3_text_defaults(gemma3_mm, tmp_path):
    """The Hub's configs leave most of text_config to Gemma3TextConfig's defaults: the view's table
    is those defaults, and a text_config stripped to what differs reads as the full one."""
    ref = transformers.Gemma3TextConfig()
    actual = {k: getattr(ref, k) for k in GEMMA3.defaults if hasattr(ref, k)}
    actual["rope_theta"] = ref.rope_parameters["full_attention"]["rope_theta"]
    actual["rope_local_base_freq"] = ref.rope_parameters["sliding_attention"]["rope_theta"]
    actual["sliding_window_pattern"] = ref._sliding_window_pattern
    assert actual == dict(GEMMA3.defaults)
    cfg = json.loads((gemma3_mm / "config.json").read_text())
    text = cfg["text_config"]
    sparse = {k: v for k, v in text.items() if k not in GEMMA3.defaults or GEMMA3.defaults[k] != v}
    assert set(sparse) < set(text) and "head_dim" in sparse  # some keys do fall back
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "text_config": sparse}))
    (tmp_path / "model.safetensors").symlink_to(gemma3_mm / "model.safetensors")
    assert ModelConfig.from_hf_config(Checkpoint.open(tmp_path).config) == \
        ModelConfig.from_hf_config(Checkpoint.open(gemma3_mm).config)


def test_broken_multimodal_folders_say_what_and_how(gemma3_mm, tmp_path):
    cfg = json.loads((gemma3_mm / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "text_config": None}))
    (tmp_path / "model.safetensors").symlink_to(gemma3_mm / "model.safetensors")
    with pytest.raises(CheckpointError, match="Gemma3ForConditionalGeneration without a text_config object"):
        Checkpoint.open(tmp_path)
    only_vision = tmp_path / "vision"
    _rewrite(gemma3_mm, only_vision, lambda k: k.replace("language_model.", "other.", 1))
    with pytest.raises(CheckpointError, match="whose files hold no text decoder layers under language_model.model., "):
        Checkpoint.open(only_vision)


def test_inspect_says_what_the_view_left_out(gemma3_mm, capsys):
    from turbopack.cli.app import main

    assert main(["inspect", str(gemma3_mm), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["kind"] == "hf" and "(the vision tower and projector) are left out" in rep["note"]
    assert all(t["name"].startswith("model.") for t in rep["tensors"])
    assert main(["inspect", str(gemma3_mm)]) == 0
    assert "Gemma3ForConditionalGeneration: its text model is read as Gemma3ForCausalLM" in capsys.readouterr().out
