"""Folding scales leaves the float model function unchanged, and the block-by-block runner computes
what the whole reference model computes."""

from __future__ import annotations

import pytest
import torch

from turbopack.checkpoint import Checkpoint
from turbopack.inference.loader import load_model
from turbopack.inference.model import Block, ModelConfig, rope_tables
from turbopack.packer import families as fam
from turbopack.packer.calibration.capture import BlockRunner, embed, load_block
from turbopack.packer.calibration.fold import fold_into_linear, fold_into_norm

Q, K, V, O, GATE, UP, DOWN = (s.module for s in (fam.Q, fam.K, fam.V, fam.O, fam.GATE, fam.UP, fam.DOWN))  # noqa: E741

CFG = ModelConfig(vocab=64, hidden=64, intermediate=96, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=16,
                  attention_bias=True, o_proj_bias=True, mlp_bias=True)


def random_block(seed: int = 0) -> Block:
    g = torch.Generator().manual_seed(seed)
    block = Block(CFG)
    with torch.no_grad():
        for name, p in block.named_parameters():
            p.copy_(
                1 + 0.3 * torch.randn(p.shape, generator=g)
                if "norm" in name
                else 0.2 * torch.randn(p.shape, generator=g)
            )
    return block.eval()


@pytest.mark.parametrize("store_dtype", [torch.float32, torch.bfloat16])
def test_folding_keeps_the_block_function(store_dtype):
    block = random_block()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 12, CFG.hidden, generator=g)
    cos, sin = rope_tables(CFG, 12)
    with torch.no_grad():
        before = block(x, cos, sin)
        scale = lambda n: torch.exp(torch.randn(n, generator=g))  # noqa: E731  (0.05x .. 20x)
        m = block.get_submodule
        fold_into_norm(block.input_layernorm, [m(Q), m(K), m(V)], scale(CFG.hidden), store_dtype)
        fold_into_linear(m(V), m(O), scale(CFG.n_kv_heads * CFG.head_dim), CFG.n_kv_heads, CFG.n_heads)  # GQA
        fold_into_norm(block.post_attention_layernorm, [m(GATE), m(UP)], scale(CFG.hidden), store_dtype)
        fold_into_linear(m(UP), m(DOWN), scale(CFG.intermediate))
        after = block(x, cos, sin)
    assert block.input_layernorm.weight.to(store_dtype).float().equal(block.input_layernorm.weight)  # storable
    assert ((after - before).abs().max() / before.abs().max()) < 1e-5


def test_fold_is_not_vacuous():
    """Scaling the consumers without dividing the producer does change the function."""
    block = random_block()
    x = torch.randn(1, 8, CFG.hidden)
    cos, sin = rope_tables(CFG, 8)
    with torch.no_grad():
        before = block(x, cos, sin)
        block.get_submodule(DOWN).weight.mul_(2.0)
        assert (block(x, cos, sin) - before).abs().max() > 1e-2


def test_block_by_block_equals_the_whole_model(calib_model):
    ckpt = Checkpoint.open(calib_model)
    model = load_model(calib_model)
    cfg = model.config
    ids = torch.randint(0, cfg.vocab, (3, 16), generator=torch.Generator().manual_seed(0))
    runner = BlockRunner(cfg, 16, torch.device("cpu"), batch_size=2)
    x = embed(ckpt, ids, torch.device("cpu"))  # float32 storage: the whole model's own precision
    for i in range(cfg.n_layers):
        runner.forward(load_block(ckpt, cfg, i, torch.device("cpu")), x)
    with torch.no_grad():
        ref = model.lm_head(model.model.norm(x))
        torch.testing.assert_close(ref, model(ids), rtol=1e-5, atol=1e-5)
