"""The reference model must reproduce transformers' logits for every config shape we claim.

Each case builds a tiny random HF model, saves it as safetensors and loads it with our load_model.
Weights are re-randomised (HF initialises biases to 0 and norms to 1, which would hide bugs there).
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

transformers = pytest.importorskip("transformers")

from turbopack.errors import CheckpointError, TurbopackError, UnsupportedModelError  # noqa: E402
from turbopack.inference import model as M  # noqa: E402
from turbopack.inference.loader import load_model  # noqa: E402
from turbopack.inference.perplexity import perplexity  # noqa: E402

TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
LLAMA3_ROPE = dict(
    rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
    original_max_position_embeddings=64,
)  # fmt: skip
LINEAR_ROPE = dict(rope_type="linear", rope_theta=10000.0, factor=4.0)
DYNAMIC_ROPE = dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0)
YARN_ROPE = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=64)
# DeepSeek's attention factor from mscale / mscale_all_dim, an untruncated ramp, other betas
YARN_MSCALE = dict(YARN_ROPE, mscale=1.0, mscale_all_dim=0.5, truncate=False, beta_fast=16, beta_slow=2)
# name -> (HF architecture, config overrides, sequence length)
CASES = {
    "llama": ("Llama", {}, 16),
    "llama_bias": ("Llama", dict(attention_bias=True, mlp_bias=True), 16),
    "mistral": ("Mistral", dict(sliding_window=4096), 16),
    "qwen2": ("Qwen2", {}, 16),  # q/k/v biases, no o_proj bias
    "llama3_rope": ("Llama", dict(rope_parameters=LLAMA3_ROPE), 48),
    "linear_rope": ("Llama", dict(rope_parameters=LINEAR_ROPE), 16),
    # 24 tokens > max_position_embeddings=16, so HF rescales the base for seq_len 24; so must we.
    "dynamic_rope": ("Llama", dict(max_position_embeddings=16, rope_parameters=DYNAMIC_ROPE), 24),
    "yarn_rope": ("Llama", dict(rope_parameters=YARN_ROPE), 48),
    "yarn_mscale": ("Qwen2", dict(rope_parameters=YARN_MSCALE), 48),
    "tied": ("Qwen2", dict(tie_word_embeddings=True), 16),
    "head_dim": ("Mistral", dict(head_dim=32), 16),  # head_dim != hidden / heads
}
ASSET = Path(M.__file__).resolve().parents[1] / "assets" / "tiny-llama"


def randomize_(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * noise if name.endswith("norm.weight") else 0.1 * noise)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> folder of a saved random HF model (built once per module, on first use)."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            arch, overrides, _ = CASES[name]
            config = getattr(transformers, f"{arch}Config")(**{**TINY, **copy.deepcopy(overrides)})
            hf = getattr(transformers, f"{arch}ForCausalLM")(config)
            randomize_(hf)
            folder = tmp_path_factory.mktemp(name)
            hf.save_pretrained(folder, safe_serialization=True)
            cache[name] = folder
        return cache[name]

    return get


def hf_logits(folder: Path, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    with torch.no_grad():
        return hf(ids).logits.float()


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def token_ids(vocab: int, seq_len: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers_fp32_and_bf16(saved, name):
    folder, seq_len = saved(name), CASES[name][2]
    ids = token_ids(TINY["vocab_size"], seq_len)
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        ours = load_model(folder, dtype=dtype)
        with torch.no_grad():
            err = rel_err(ours(ids), hf_logits(folder, ids, dtype))
        assert err < tol, f"{name} {dtype}: relative error {err:.2e}"


def test_param_names_and_tying_follow_hf(saved):
    hf = transformers.AutoModelForCausalLM.from_pretrained(saved("tied"))
    ours = load_model(saved("tied"))
    assert set(ours.state_dict()) == set(hf.state_dict())
    cfg = ours.config
    assert cfg.tie_word_embeddings and cfg.attention_bias and not cfg.o_proj_bias
    assert ours.lm_head.weight is ours.model.embed_tokens.weight


@pytest.mark.parametrize("name,kind", [("llama3_rope", "llama3"), ("yarn_rope", "yarn"), ("yarn_mscale", "yarn")])
def test_rope_scaling_is_not_vacuous(saved, name, kind):
    """Each scaled case would catch a model that ignored its scaling (unscaled rope is far off),
    and YaRN's one that ignored its attention factor (which multiplies cos and sin)."""
    folder, seq_len = saved(name), CASES[name][2]
    ours = load_model(folder)
    s = ours.config.rope_scaling
    assert s.type == kind
    ids = token_ids(TINY["vocab_size"], seq_len)
    wrong = [None] + ([replace(s, attention_factor=1.0)] if s.attention_factor != 1.0 else [])
    # YaRN's factor: 0.1 ln 4 + 1 = 1.14; DeepSeek's mscale ratio (0.1 ln 4 + 1) / (0.05 ln 4 + 1) = 1.06
    assert len(wrong) == (2 if kind == "yarn" else 1)
    for scaling in wrong:
        other = M.build_model(replace(ours.config, rope_scaling=scaling), device="cpu")
        other.load_state_dict(ours.state_dict())
        with torch.no_grad():
            assert rel_err(other(ids), hf_logits(folder, ids, torch.float32)) > 1e-3, scaling


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_kv_cache_prefill_then_decode_matches_full_forward(saved, name):
    model = load_model(saved(name))
    ids = token_ids(TINY["vocab_size"], 8)
    model.setup_caches(max_batch_size=2, max_seq_len=32)
    with torch.no_grad():
        full = model(ids)
        steps = [model(ids[:, :5], torch.arange(5))]
        for pos in range(5, 8):
            steps.append(model(ids[:, pos : pos + 1], torch.tensor([pos])))
    assert rel_err(torch.cat(steps, dim=1), full) < 1e-5


def test_input_pos_without_caches_is_an_error(saved):
    model = load_model(saved("llama"))
    with pytest.raises(RuntimeError, match="setup_caches"):
        model(token_ids(TINY["vocab_size"], 4), torch.arange(4))


class AddConstant(nn.Module):
    def __init__(self, linear: nn.Linear, c: float):
        super().__init__()
        self.linear, self.c = linear, c

    def forward(self, x):
        return self.linear(x) + self.c


def test_replace_linears_swaps_modules_used_in_forward(saved):
    model = load_model(saved("llama"))
    ids = token_ids(TINY["vocab_size"], 8)
    with torch.no_grad():
        before = model(ids)
    seen: list[str] = []
    replaced = M.replace_linears(model, lambda name, lin: seen.append(name))  # keeps everything
    assert replaced == [] and len(seen) == 7 * TINY["num_hidden_layers"] + 1
    assert "model.layers.0.self_attn.q_proj" in seen and "lm_head" in seen

    def add_half_to(suffix):
        return lambda name, lin: AddConstant(lin, 0.5) if name.endswith(suffix) else None

    assert M.replace_linears(model, add_half_to("lm_head")) == ["lm_head"]
    assert isinstance(model.lm_head, AddConstant)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), before + 0.5)

    assert len(M.replace_linears(model, add_half_to("mlp.down_proj"))) == TINY["num_hidden_layers"]
    assert isinstance(model.model.layers[1].mlp.down_proj, AddConstant)
    with torch.no_grad():
        assert (model(ids) - (before + 0.5)).abs().max() > 1e-2


def test_unsupported_architecture_names_it_and_lists_supported(tmp_path):
    with pytest.raises(UnsupportedModelError) as err:
        M.ModelConfig.from_hf_config({"architectures": ["GPT2LMHeadModel"]})
    assert isinstance(err.value, TurbopackError) and err.value.exit_code == 2
    assert "GPT2LMHeadModel" in str(err.value) and "Qwen2ForCausalLM" in str(err.value)

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["FalconForCausalLM"]}))
    with pytest.raises(UnsupportedModelError, match="FalconForCausalLM"):
        load_model(tmp_path)


def test_unsupported_rope_and_legacy_rope_keys():
    base = {"architectures": ["LlamaForCausalLM"], **TINY}
    with pytest.raises(UnsupportedModelError, match="'mrope' is not supported; supported: default, linear"):
        M.ModelConfig.from_hf_config({**base, "rope_parameters": {"rope_type": "mrope"}})
    # transformers 4.x layout: `rope_scaling` with "type", rope_theta at top level.
    legacy = {**base, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}}
    old = M.ModelConfig.from_hf_config(legacy)
    assert old.rope_theta == 5e5
    assert old.rope_scaling == M.RopeScaling("linear", 2.0, original_max_position_embeddings=256)
    assert M.ModelConfig.from_hf_config({**base, "rope_scaling": None}).rope_scaling is None


def test_perplexity_matches_hf_loss(saved):
    folder = saved("llama")
    ids = token_ids(TINY["vocab_size"], 100, batch=1)[0]
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():  # 3 non-overlapping windows of 32; the last 4 tokens are dropped
        windows = ids[:96].view(3, 32)
        expected = torch.exp(hf(windows, labels=windows).loss).item()
    ours = perplexity(load_model(folder), ids, seq_len=32)
    assert ours == pytest.approx(expected, rel=1e-4)
    one_window = perplexity(load_model(folder), ids, seq_len=32, max_windows=1)
    assert one_window != pytest.approx(ours, rel=1e-6)


def test_sharded_checkpoint_loads_like_single_file(saved, tmp_path):
    hf = transformers.AutoModelForCausalLM.from_pretrained(saved("qwen2"))
    hf.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    ids = token_ids(TINY["vocab_size"], 8)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path)(ids), load_model(saved("qwen2"))(ids))


def test_only_hf_weight_files_are_read(saved, tmp_path):
    (tmp_path / "config.json").write_text((saved("llama") / "config.json").read_text())
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tmp_path)
    # The bundled model ships token ids as extra safetensors next to its weights.
    shutil.copy(saved("llama") / "model.safetensors", tmp_path)
    save_file({"input_ids": torch.arange(10, dtype=torch.int16)}, tmp_path / "ids.safetensors")
    assert load_model(tmp_path).config.vocab == TINY["vocab_size"]


def test_sliding_window_longer_sequences_are_refused():
    cfg = M.ModelConfig(vocab=16, hidden=8, intermediate=16, n_layers=1, n_heads=2, n_kv_heads=1,
                        head_dim=4, sliding_window=8)  # fmt: skip
    model = M.build_model(cfg, device="cpu")
    model(torch.zeros(1, 8, dtype=torch.long))  # within the window: plain causal attention
    with pytest.raises(UnsupportedModelError, match="sliding_window"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(UnsupportedModelError, match="sliding_window"):
        model.setup_caches(1, 16)


@pytest.mark.skipif(not ASSET.is_dir(), reason="turbopack/assets/tiny-llama not present yet")
def test_bundled_tiny_llama_matches_transformers_bf16():
    ours = load_model(ASSET, dtype=torch.bfloat16)
    ids = token_ids(ours.config.vocab, min(32, ours.config.max_position_embeddings))
    with torch.no_grad():
        err = rel_err(ours(ids), hf_logits(ASSET, ids, torch.bfloat16))
    assert err < 2e-2, f"relative error {err:.2e}"
