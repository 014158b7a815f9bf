"""The reference model reproduces transformers' logits for Qwen3, Gemma 2/3 and Phi-3 (with LongRoPE:
Phi-3.5-mini, Phi-4-mini), and each of the switches that tell these families apart changes the
logits (so the match is not vacuous)."""

from __future__ import annotations

import inspect
import json
import math
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


def longrope(pairs: int) -> dict:
    """LongRoPE over ``pairs`` rotary channel pairs: distinct short and long factors per pair."""
    return {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0 + 0.25 * i for i in range(pairs)],
            "long_factor": [1.0 + 2.0 * i for i in range(pairs)]}


# gemma3_mm: Gemma3ForConditionalGeneration, read as its text model (turbopack.checkpoint.text_view),
# against transformers' multimodal model on text alone
FAMILIES = ("qwen3", "gemma2", "gemma3", "gemma3_mm", "phi3", "phi3_partial", "phi3_longrope", "phi4_mini")
LONG_FROM = 16  # the LongRoPE models' original_max_position_embeddings: passes past it take the long factors
OVERRIDES = {
    "phi3_partial": ("phi3", dict(partial_rotary_factor=0.5)),
    # Phi-3.5-mini's rope (Phi-3's top-level original_max_position_embeddings); Phi-4-mini's adds a
    # partial rotary (12 of 16 channels: 6 pairs)
    "phi3_longrope": ("phi3", dict(original_max_position_embeddings=LONG_FROM, rope_parameters=longrope(8))),
    "phi4_mini": ("phi3", dict(partial_rotary_factor=0.75, original_max_position_embeddings=LONG_FROM,
                               rope_parameters=longrope(6))),
}
SEQ = 20  # > the Gemma window of 8: the band masks of the sliding layers take part; > LONG_FROM


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
    "phi3_longrope": dict(rope_scaling=None),
    "phi4_mini": dict(rope_scaling=None),
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


@pytest.mark.parametrize("name", ["gemma2", "gemma3", "gemma3_mm", "phi3"])
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


def hf_cached_logits(folder: Path, x: torch.Tensor, prefill: int) -> torch.Tensor:
    """transformers' logits for a prefill of ``prefill`` tokens, then one token per step on its cache."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    # the cache is filled in place; transformers 5.25 renamed the argument from past_key_values
    name = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
    cache = {name: transformers.DynamicCache(config=hf.config)}
    with torch.no_grad():
        logits = [hf(x[:, :prefill], use_cache=True, **cache).logits]
        logits += [hf(x[:, p:p + 1], use_cache=True, **cache).logits for p in range(prefill, x.shape[1])]
    return torch.cat(logits, dim=1).float()


@pytest.mark.parametrize("name", ["phi3_longrope", "phi4_mini"])
def test_longrope_short_and_long_factors_as_transformers(family_dir, name):
    """transformers turns a pass with the long factors once its last position reaches past the
    training length, else with the short ones: a pass within it, one past it (test above), a
    cache filled within it and decoded across it, and a prefill that crosses it (long for all)."""
    folder = family_dir(name)
    model = load_model(folder)
    s = model.config.rope_scaling
    assert s.type == "longrope" and s.original_max_position_embeddings == LONG_FROM
    assert abs(s.attention_factor - (1 + math.log(128 / 16) / math.log(16)) ** 0.5) < 1e-12
    short = ids(12)
    with torch.no_grad():
        assert rel_err(model(short), hf_logits(folder, short)) < 1e-4
        same = M.build_model(replace(model.config, rope_scaling=replace(s, long_factor=s.short_factor)), device="cpu")
        same.load_state_dict(model.state_dict())
        assert rel_err(same(ids()), hf_logits(folder, ids())) > 1e-3  # the long factors matter past 16
    x = ids(24)
    for prefill in (5, 18):
        model.setup_caches(max_batch_size=2, max_seq_len=32)
        with torch.no_grad():
            steps = [model(x[:, :prefill], torch.arange(prefill))]
            steps += [model(x[:, p:p + 1], torch.tensor([p])) for p in range(prefill, x.shape[1])]
        assert rel_err(torch.cat(steps, dim=1), hf_cached_logits(folder, x, prefill)) < 1e-4, prefill


def test_phi3_holds_fused_projections_under_hf_names(family_dir):
    ours = load_model(family_dir("phi3"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(family_dir("phi3"))
    assert set(ours.state_dict()) == set(hf.state_dict())
    assert "model.layers.0.self_attn.qkv_proj.weight" in ours.state_dict()


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def test_refusals_are_one_line_and_name_the_way_out(family_dir, tmp_path):
    base = _config(family_dir("phi3"))
    legacy = {k: v for k, v in base.items() if k != "rope_parameters"}  # a transformers 4.x config
    for old_name in ("su", "yarn"):  # Phi-3's first 128k configs: both mean LongRoPE there
        legacy["rope_scaling"] = {"type": old_name, **{k: v for k, v in longrope(8).items() if k != "rope_type"}}
        assert M.ModelConfig.from_hf_config(legacy).rope_scaling.type == "longrope"
    legacy["rope_scaling"] = {"type": "su", "short_factor": [1.0] * 7, "long_factor": [1.0] * 8}
    with pytest.raises(CheckpointError, match="short_factor has 7 values, but the 16 rotary channels need 8"):
        M.ModelConfig.from_hf_config(legacy)
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
