"""The reference model reproduces transformers' logits for Qwen3, Gemma 2/3 and Phi-3, and each of
the switches that tell these families apart changes the logits (so the match is not vacuous)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tinymodels import make_tiny_model  # noqa: E402

from turbopack.errors import CheckpointError, UnsupportedModelError  # noqa: E402
from turbopack.inference import model as M  # noqa: E402
from turbopack.inference.config import NormStyle  # noqa: E402
from turbopack.inference.loader import load_model  # noqa: E402

FAMILIES = ("qwen3", "gemma2", "gemma3", "phi3", "phi3_partial")
OVERRIDES = {"phi3_partial": ("phi3", dict(partial_rotary_factor=0.5))}
SEQ = 20  # > the Gemma window of 8: the band masks of the sliding layers take part


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory):
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            arch, extra = OVERRIDES.get(name, (name, {}))
            cache[name] = make_tiny_model(tmp_path_factory.mktemp(name) / name, arch=arch, num_hidden_layers=4,
                                          **extra)
        return cache[name]

    return get


def ids(n: int = SEQ, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, 128, (batch, n), generator=torch.Generator().manual_seed(1))


def hf_logits(folder: Path, x: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    with torch.no_grad():
        return hf(x).logits.float()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_match_transformers(family_dir, name):
    folder = family_dir(name)
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        with torch.no_grad():
            err = rel_err(load_model(folder, dtype=dtype)(ids()), hf_logits(folder, ids(), dtype))
        assert err < tol, f"{name} {dtype}: relative error {err:.2e}"


#: family -> config switches that, turned off, must move the logits away from transformers'
SWITCHES = {
    "qwen3": dict(qk_norm=False),
    "gemma2": dict(attn_softcap=None, final_softcap=None, attn_scale=None, embed_scale=None,
                   layer_windows=None, norm=NormStyle.LLAMA),
    "gemma3": dict(local_rope_theta=None, layer_windows=None, rope_scaling=None, qk_norm=False),
    "phi3_partial": dict(rotary_dim=None),
}


@pytest.mark.parametrize("name,field", [(n, f) for n, fs in SWITCHES.items() for f in fs])
def test_each_family_switch_matters(family_dir, name, field):
    folder = family_dir(name)
    ours = load_model(folder)
    cfg = replace(ours.config, **{field: SWITCHES[name][field]})
    if field == "qk_norm":  # the norms' weights are then simply not loaded
        state = {k: v for k, v in ours.state_dict().items() if "q_norm" not in k and "k_norm" not in k}
    else:
        state = ours.state_dict()
    other = M.build_model(cfg, device="cpu")
    other.load_state_dict(state)
    with torch.no_grad():
        assert rel_err(other(ids()), hf_logits(folder, ids())) > 1e-3, f"{name}: {field} changes nothing"


@pytest.mark.parametrize("name", ["gemma2", "gemma3", "phi3"])
def test_kv_cache_decode_matches_full_forward(family_dir, name):
    """Decoding past the window: the cache path applies the same band, scale and soft-cap."""
    model = load_model(family_dir(name))
    x = ids(14)
    model.setup_caches(max_batch_size=2, max_seq_len=32)
    with torch.no_grad():
        full = model(x)
        steps = [model(x[:, :5], torch.arange(5))]
        steps += [model(x[:, p:p + 1], torch.tensor([p])) for p in range(5, 14)]
    assert rel_err(torch.cat(steps, dim=1), full) < 1e-5


def test_phi3_holds_fused_projections_under_hf_names(family_dir):
    ours = load_model(family_dir("phi3"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(family_dir("phi3"))
    assert set(ours.state_dict()) == set(hf.state_dict())
    assert "model.layers.0.self_attn.qkv_proj.weight" in ours.state_dict()


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def test_refusals_are_one_line_and_name_the_way_out(family_dir, tmp_path):
    base = _config(family_dir("phi3"))
    longrope = {**base, "rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 8,
                                            "long_factor": [2.0] * 8, "original_max_position_embeddings": 64}}
    with pytest.raises(UnsupportedModelError, match=r"rope_parameters.rope_type 'longrope'") as err:
        M.ModelConfig.from_hf_config(longrope)
    assert "\n" not in str(err.value) and "docs/families.md" in str(err.value)
    legacy = {k: v for k, v in base.items() if k != "rope_parameters"}  # a transformers 4.x config
    legacy["rope_scaling"] = {"type": "su", "short_factor": [1.0], "long_factor": [1.0]}
    with pytest.raises(UnsupportedModelError, match=r"rope_scaling.rope_type 'su'"):
        M.ModelConfig.from_hf_config(legacy)
    vlm = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3"}
    with pytest.raises(UnsupportedModelError, match="Gemma3ForCausalLM") as err:
        M.ModelConfig.from_hf_config(vlm)
    assert err.value.exit_code == 2 and "\n" not in str(err.value)
    with pytest.raises(UnsupportedModelError) as err:
        M.ModelConfig.from_hf_config({"architectures": ["FalconForCausalLM"]})
    for arch in ("Qwen3ForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM"):
        assert arch in str(err.value)
    gemma = _config(family_dir("gemma2"))
    with pytest.raises(CheckpointError, match="layer_types"):
        M.ModelConfig.from_hf_config({**gemma, "layer_types": ["sliding_attention"]})


def test_model_type_alone_selects_the_family(family_dir):
    cfg = {k: v for k, v in _config(family_dir("gemma3")).items() if k != "architectures"}
    assert cfg["model_type"] == "gemma3_text"
    assert M.ModelConfig.from_hf_config(cfg).local_rope_theta == 1e4


def test_legacy_gemma3_rope_keys(family_dir):
    """transformers 4.x wrote rope_theta / rope_local_base_freq / rope_scaling at the top level."""
    cfg = {k: v for k, v in _config(family_dir("gemma3")).items() if k != "rope_parameters"}
    old = M.ModelConfig.from_hf_config({**cfg, "rope_theta": 5e5, "rope_local_base_freq": 2e4,
                                        "rope_scaling": {"rope_type": "linear", "factor": 8.0}})
    assert (old.rope_theta, old.local_rope_theta, old.rope_scaling.factor) == (5e5, 2e4, 8.0)
    assert M.ModelConfig.from_hf_config(cfg).rope_theta == 1e6  # Gemma 3's default global base
