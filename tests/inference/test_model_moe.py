"""The reference mixture-of-experts model: Mixtral, Qwen2-MoE (shared expert, a dense layer) and
Qwen3-MoE reproduce transformers' logits; routing, renormalisation and the shared expert matter;
the all-experts mode used by calibration leaves the output unchanged."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tinymodels import make_tiny_model  # noqa: E402

from turbopack.inference import model as M  # noqa: E402
from turbopack.inference.loader import load_model  # noqa: E402
from turbopack.inference.moe import MoE  # noqa: E402

MOE = ("mixtral", "qwen2_moe", "qwen3_moe")


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = make_tiny_model(tmp_path_factory.mktemp(name) / name, arch=name, num_hidden_layers=3)
        return cache[name]

    return get


def ids(n: int = 20) -> torch.Tensor:
    return torch.randint(0, 128, (2, n), generator=torch.Generator().manual_seed(1))


def hf_logits(folder: Path, dtype=torch.float32) -> torch.Tensor:
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    with torch.no_grad():
        return hf(ids()).logits.float()


def rel_err(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", MOE)
def test_logits_match_transformers(moe_dir, name):
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        with torch.no_grad():
            err = rel_err(load_model(moe_dir(name), dtype=dtype)(ids()), hf_logits(moe_dir(name), dtype))
        assert err < tol, f"{name} {dtype}: {err:.2e}"


def test_structure_follows_the_config(moe_dir):
    model = load_model(moe_dir("qwen2_moe"))
    layers = model.model.layers
    assert isinstance(layers[0].mlp, MoE) and not isinstance(layers[1].mlp, MoE)  # mlp_only_layers=[1]
    assert layers[0].mlp.has_shared and len(layers[0].mlp.experts) == 4
    mixtral = load_model(moe_dir("mixtral"))
    assert isinstance(mixtral.model.layers[0].block_sparse_moe, MoE)
    assert {"w1", "w2", "w3"} <= dict(mixtral.model.layers[0].block_sparse_moe.experts[0].named_children()).keys()


@pytest.mark.parametrize("name,change", [("qwen3_moe", "normalise"), ("qwen2_moe", "shared"), ("mixtral", "top_k")])
def test_each_moe_switch_matters(moe_dir, name, change):
    model = load_model(moe_dir(name))
    with torch.no_grad():
        for layer in model.model.layers:
            moe = layer.ffn
            if not isinstance(moe, MoE):
                continue
            if change == "normalise":
                moe.normalise = not moe.normalise
            elif change == "shared":
                moe.has_shared = False
            else:
                moe.top_k = 1
        assert rel_err(model(ids()), hf_logits(moe_dir(name))) > 1e-3


@pytest.mark.parametrize("name", MOE)
def test_all_experts_mode_gives_the_same_output(moe_dir, name):
    model = load_model(moe_dir(name))
    with torch.no_grad():
        routed = model(ids())
        for m in model.modules():
            if isinstance(m, MoE):
                m.all_experts = True
        torch.testing.assert_close(model(ids()), routed, rtol=1e-5, atol=1e-5)


def test_kv_cache_decode_matches_full_forward(moe_dir):
    model = load_model(moe_dir("qwen2_moe"))
    x = ids(10)
    model.setup_caches(max_batch_size=2, max_seq_len=16)
    with torch.no_grad():
        full = model(x)
        steps = [model(x[:, :4], torch.arange(4))] + [model(x[:, p:p + 1], torch.tensor([p])) for p in range(4, 10)]
    assert rel_err(torch.cat(steps, 1), full) < 1e-5


def test_moe_config_errors_are_config_errors(moe_dir):
    import json

    from turbopack.errors import CheckpointError

    cfg = json.loads((moe_dir("mixtral") / "config.json").read_text())
    with pytest.raises(CheckpointError, match="num_local_experts"):
        M.ModelConfig.from_hf_config({k: v for k, v in cfg.items() if k != "num_local_experts"})
    with pytest.raises(CheckpointError, match="num_experts_per_tok"):
        M.ModelConfig.from_hf_config({**cfg, "num_experts_per_tok": 9})
    assert replace(M.ModelConfig.from_hf_config(cfg)).moe.normalise  # Mixtral always renormalises
