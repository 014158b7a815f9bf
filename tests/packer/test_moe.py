"""Mixture-of-experts checkpoints through the packer: every expert's linears (and Qwen2-MoE's
shared expert) are quantized, routers stay 16-bit and untouched, every format packs and emulates
as its kernels compute, tp=2 slices every expert, and calibration reaches every expert."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from packhelp import emulated_model, needs_layouts, reference_model
from tinymodels import make_tiny_model, write_word_tokenizer

from turbopack.checkpoint import Checkpoint
from turbopack.checkpoint.quantized import QuantizedCheckpoint
from turbopack.formats import get_format
from turbopack.inference.loader import load, load_model
from turbopack.packer.calibration.capture import BlockJob, BlockRunner, HessianTap, block_config, embed, load_block
from turbopack.packer.families import Selection, family_of
from turbopack.packer.quantize import quantize

MOE = ("mixtral", "qwen2_moe", "qwen3_moe")
ROUTERS = ("block_sparse_moe.gate.weight", "mlp.gate.weight", "mlp.shared_expert_gate.weight")


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    cache: dict = {}

    def get(name: str, fmt: str | None = None, params: dict | None = None):
        if name not in cache:
            folder = make_tiny_model(tmp_path_factory.mktemp(name) / name, arch=name, intermediate_size=128)
            write_word_tokenizer(folder)
            cache[name] = folder
        if fmt is None:
            return cache[name]
        key = (name, fmt, tuple(sorted((params or {}).items())))
        if key not in cache:
            cache[key] = tmp_path_factory.mktemp("q") / f"{name}-{fmt}"
            quantize(cache[name], cache[key], fmt, progress=False, **(params or {}))
        return cache[key]

    return get


@pytest.mark.parametrize("name", MOE)
def test_experts_are_quantized_and_routers_kept(moe, name):
    ckpt = Checkpoint.open(moe(name))
    sel = Selection(family_of(ckpt.config))
    kept = {n: sel.reason_skipped(n, len(e.shape)) for n, e in ckpt.tensors.items()}
    routers = [n for n in kept if n.endswith(ROUTERS)]
    assert routers and all(kept[n] == "not a decoder linear (embedding/norm/other)" for n in routers)
    experts = [n for n in kept if ".experts." in n or "shared_expert." in n]
    assert experts and all(kept[n] is None for n in experts)
    # 2 layers of 4 experts x 3 linears; Qwen2-MoE: layer 1 is dense (mlp_only_layers), plus a shared expert
    assert len(experts) == (4 * 3 + 3 if name == "qwen2_moe" else 4 * 3 * 2)


@needs_layouts
@pytest.mark.parametrize("fmt,params", [("w4a16", {"group_size": 32}), ("w8a8", {}), ("fp8", {})],
                         ids=["w4a16", "w8a8", "fp8"])
@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
def test_emulated_experts_match_the_reference(moe, tmp_path, name, fmt, params):
    from turbopack.packer.pack import pack

    src = moe(name, fmt, params)
    pack(src, tmp_path / "p", arch="sm90", progress=False)
    x = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, got = reference_model(src, tmp_path / "p")(x), emulated_model(tmp_path / "p")(x)
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-4


@needs_layouts
def test_tp2_splits_every_expert_and_replicates_the_router(moe, tmp_path):
    from turbopack.packer.pack import pack
    from turbopack.packer.verify import verify

    src = moe("qwen2_moe", "w4a16", {"group_size": 32})
    pack(src, tmp_path / "p", arch="sm90", tp=2, progress=False)
    ranks = [Checkpoint.open(tmp_path / "p" / f"rank{r}") for r in (0, 1)]
    import json

    man = json.loads((tmp_path / "p" / "rank1" / "turbopack.json").read_text())["tensors"]
    assert man["model.layers.0.mlp.experts.3.gate_proj"]["shape"] == [32, 64]
    assert man["model.layers.0.mlp.experts.3.down_proj"]["tp"]["parallel"] == "row"
    router = "model.layers.0.mlp.gate.weight"
    source = QuantizedCheckpoint(src).plain_tensor(router)
    assert all(torch.equal(r.read(router), source) and r.read(router).dtype == torch.bfloat16 for r in ranks)
    assert verify(tmp_path / "p", against=src).ok


def test_calibration_reaches_every_expert(moe):
    """While statistics are taken every token goes through every expert: each expert's down_proj
    Hessian counts all calibration tokens, though routing sends it only some of them."""
    ckpt = Checkpoint.open(moe("mixtral"))
    cfg = block_config(ckpt)
    runner = BlockRunner(cfg, 16, torch.device("cpu"))
    block = load_block(ckpt, cfg, 0, torch.device("cpu"))
    x = embed(ckpt, torch.randint(0, 128, (3, 16), generator=torch.Generator().manual_seed(0)), torch.device("cpu"))
    job = BlockJob(family_of(ckpt.config), block, x, runner, get_format("w8a16"), frozenset(), torch.bfloat16)
    downs = [s[0] for s in job.stages() if s[0].endswith(".w2")]
    assert downs == [f"block_sparse_moe.experts.{e}.w2" for e in range(4)]
    taps = {d: HessianTap() for d in downs}
    runner.capture(block, x, taps)
    assert all(t.n == 3 * 16 for t in taps.values())
    assert not block.block_sparse_moe.all_experts  # routing is back for the block's real output


#: (format, options, how much worse than RTN it may be): SmoothQuant moves activation range into the
#: weights, which a random model without outliers does not repay; a fold in the wrong place costs far more
CALIBRATED = [("w4a16", dict(group_size=32, method="awq"), 1.3), ("w4a16", dict(group_size=32, method="gptq"), 1.3),
              ("w8a8", dict(smooth=True), 2.0)]


@pytest.mark.parametrize("name,fmt,opts,slack", [("mixtral", *c) for c in CALIBRATED] + [("qwen2_moe", *CALIBRATED[0])],
                         ids=["mixtral-awq", "mixtral-gptq", "mixtral-smoothquant", "qwen2_moe-awq"])
def test_calibrated_moe_is_as_good_as_rtn(moe, tmp_path: Path, name, fmt, opts, slack):
    folder = moe(name)
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"w{(7 * i) % 120}" for i in range(3000)))
    quantize(folder, tmp_path / "rtn", fmt, progress=False, **{k: v for k, v in opts.items() if k == "group_size"})
    quantize(folder, tmp_path / "cal", fmt, calib=text, calib_samples=8, calib_seqlen=16, progress=False, **opts)
    x = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = load_model(folder)(x)
        err = {k: ((load(tmp_path / k, device="cpu", dtype=torch.float32).model(x) - ref).abs().max()
                   / ref.abs().max()).item() for k in ("rtn", "cal")}
    assert err["cal"] < slack * err["rtn"], err
    cal, src = QuantizedCheckpoint(tmp_path / "cal"), Checkpoint.open(folder)
    for n in (n for n in src.tensors if n.endswith(ROUTERS)):  # the routers: never scaled, never rounded
        assert torch.equal(cal.plain_tensor(n), src.read(n)), n


def test_export_tells_engines_the_routers_stay_16bit(moe, tmp_path):
    import json

    from turbopack.packer.interop.export import export

    export(moe("qwen2_moe", "w4a16", {"group_size": 32}), tmp_path / "ct", progress=False)
    ignore = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]["ignore"]
    assert {"model.layers.0.mlp.gate", "model.layers.0.mlp.shared_expert_gate"} <= set(ignore)
    assert not any(".experts." in n for n in ignore)
