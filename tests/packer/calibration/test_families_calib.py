"""Calibration on Qwen3, Gemma 2/3 and Phi-3: the block runner reproduces the whole model, every
scale group of a family folds without changing the function (Gemma's 1 + w norms, Phi-3's fused
pieces), and AWQ, GPTQ and SmoothQuant write folders whose model stays close to the float one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tinymodels import make_tiny_model, write_word_tokenizer

from turbopack.checkpoint import Checkpoint
from turbopack.checkpoint.quantized import QuantizedCheckpoint
from turbopack.formats import get_format
from turbopack.inference.loader import load, load_model
from turbopack.packer.calibration.awq import fold_group, producer_rows
from turbopack.packer.calibration.capture import BlockJob, BlockRunner, block_config, embed, load_block
from turbopack.packer.families import family_of
from turbopack.packer.quantize import quantize

FAMILIES = ("qwen3", "gemma2", "gemma3", "phi3")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def fam_model(tmp_path_factory):
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            folder = make_tiny_model(tmp_path_factory.mktemp(name) / name, arch=name)
            write_word_tokenizer(folder)
            cache[name] = folder
        return cache[name]

    return get


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", FAMILIES)
def test_block_by_block_equals_the_whole_model(fam_model, name):
    """Embedding scale, local rope tables and band masks (16 tokens > Gemma's window 8) included."""
    folder = fam_model(name)
    ckpt, model = Checkpoint.open(folder), load_model(folder)
    cfg = block_config(ckpt)
    ids = torch.randint(0, cfg.vocab, (3, 16), generator=torch.Generator().manual_seed(0))
    runner = BlockRunner(cfg, 16, CPU, batch_size=2)
    x = embed(ckpt, ids, CPU, torch.float32, cfg.embed_scale)
    for i in range(cfg.n_layers):
        runner.forward(load_block(ckpt, cfg, i, CPU), x)  # in place
    with torch.no_grad():
        ref = model.lm_head(model.model.norm(x))
        if cfg.final_softcap is not None:
            ref = torch.tanh(ref / cfg.final_softcap) * cfg.final_softcap
        assert rel_err(ref, model(ids)) < 1e-5


@pytest.mark.parametrize("name", FAMILIES)
def test_every_scale_group_folds_without_changing_the_block(fam_model, name):
    folder = fam_model(name)
    ckpt = Checkpoint.open(folder)
    cfg, family = block_config(ckpt), family_of(ckpt.config)
    runner = BlockRunner(cfg, 12, CPU)
    block = load_block(ckpt, cfg, 1, CPU)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 12, cfg.hidden, generator=g)
    job = BlockJob(family, block, x, runner, get_format("w8a16"), frozenset(), torch.float32)
    before = x.clone()
    runner.forward(block, before)
    for group in family.groups:
        producer = block.get_submodule(group.producer)
        rows = producer_rows(job, group)
        width = cfg.hidden if rows is None and not hasattr(producer, "in_features") else \
            (rows[1] - rows[0] if rows else producer.weight.shape[0])
        with torch.no_grad():
            fold_group(job, group, torch.exp(torch.randn(width, generator=g)), "test")  # 0.05x .. 20x
    after = x.clone()
    runner.forward(block, after)
    assert rel_err(after, before) < 1e-4
    assert any(k.endswith("layernorm.weight") for k in job.modified)


CALIBRATED = [("w4a16", dict(group_size=32, method="awq")), ("w4a16", dict(group_size=32, method="gptq")),
              ("w8a8", dict(smooth=True, alpha=0.5))]


@pytest.mark.parametrize("fmt,opts", CALIBRATED, ids=["awq", "gptq", "smoothquant"])
@pytest.mark.parametrize("name", FAMILIES)
def test_calibrated_methods_are_as_good_as_rtn(fam_model, calib_text, tmp_path, name, fmt, opts):
    """A fold at the wrong place (a norm, a fused piece) would leave the quantized model far from
    the float one; with the right ones the calibrated logits are about as close as RTN's."""
    folder = fam_model(name)
    params = {k: v for k, v in opts.items() if k == "group_size"}
    quantize(folder, tmp_path / "rtn", fmt, progress=False, **params)
    quantize(folder, tmp_path / "cal", fmt, calib=calib_text, calib_samples=8, calib_seqlen=16, progress=False, **opts)
    qc = QuantizedCheckpoint(tmp_path / "cal")
    assert len(qc.modules) == len(family_of(qc.config).linears) * 2
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = load_model(folder)(ids)
        err = {k: rel_err(load(tmp_path / k, device="cpu", dtype=torch.float32).model(ids), ref)
               for k in ("rtn", "cal")}
    print(name, opts, err)
    # SmoothQuant's statistics come from bf16-stored hidden states (capture.hidden_dtype): on the tiny
    # random Phi-3 that measured 1.42x RTN's error (1.0x with float32 storage); a misplaced fold is >> 2x
    bound = 1.5 if opts.get("smooth") else 1.3
    assert err["cal"] < bound * err["rtn"]


@pytest.mark.parametrize("name", ["gemma2", "gemma3"])
def test_self_generation_cache_attends_like_the_model(fam_model, name):
    """Self-generated calibration decodes with its own prefix cache: Gemma's scale, soft-cap and
    sliding bands must hold there too (12 positions > the window of 8)."""
    from turbopack.packer.calibration.selfgen import prefix_cache

    model = load_model(fam_model(name))
    x = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(4))
    outs = []
    for cache in (None, prefix_cache()):
        model.setup_caches(2, 16, cache_cls=cache)
        with torch.no_grad():
            steps = [model(x[:, :3], torch.arange(3))] + [model(x[:, p:p + 1], torch.tensor([p])) for p in range(3, 12)]
        outs.append(torch.cat(steps, 1))
    assert rel_err(outs[1], outs[0]) < 1e-5
