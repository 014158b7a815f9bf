"""Qwen3, Gemma 2/3 and Phi-3 through the packer: the right tensors are quantized, every format
packs and runs through the layouts' emulator as its kernel's math promises, and --tp splits Phi-3's
fused q|k|v and gate|up at their own boundaries (ranks compute the unsplit model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from packhelp import bits_equal, emulated_model, manifest, needs_layouts, reference_model, unpack_folder
from tinymodels import make_tiny_model

from turbopack.checkpoint import Checkpoint
from turbopack.checkpoint.quantized import QuantizedCheckpoint
from turbopack.errors import CheckpointError, ShapeError
from turbopack.inference.config import ModelConfig
from turbopack.inference.model import MLP, Attention, rope_tables
from turbopack.packer import tp as T
from turbopack.packer.families import FAMILIES, Selection, check_dims, family_of
from turbopack.packer.quantize import quantize

NEW = ("qwen3", "gemma2", "gemma3", "phi3")
#: intermediate 128: a tp=2 rank's K of down_proj (64) holds whole groups of 32
DIMS = dict(intermediate_size=128)
FORMATS = [("w4a16", {"group_size": 32}), ("w8a16", {}), ("w8a8", {}), ("fp8", {})]


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    """(family, format, params) -> (HF folder, quantized folder), built once."""
    cache: dict = {}

    def get(name: str, fmt: str | None = None, params: dict | None = None):
        if name not in cache:
            cache[name] = make_tiny_model(tmp_path_factory.mktemp(name) / name, arch=name, **DIMS)
        if fmt is None:
            return cache[name]
        key = (name, fmt, tuple(sorted((params or {}).items())))
        if key not in cache:
            cache[key] = tmp_path_factory.mktemp("q") / f"{name}-{fmt}"
            quantize(cache[name], cache[key], fmt, progress=False, **(params or {}))
        return cache[name], cache[key]

    return get


def pack(*args, **kwargs):
    from turbopack.packer.pack import pack as run

    return run(*args, progress=False, **kwargs)


@pytest.mark.parametrize("name", NEW)
def test_selection_quantizes_exactly_the_family_linears(fam, name):
    ckpt = Checkpoint.open(fam(name))
    family = family_of(ckpt.config)
    sel = Selection(family)
    picked = sorted(n for n, e in ckpt.tensors.items() if sel.reason_skipped(n, len(e.shape)) is None)
    want = sorted(f"model.layers.{i}.{s.module}.weight" for i in range(2) for s in family.linears)
    assert picked == want
    check_dims(ckpt.config, {n: e.shape for n, e in ckpt.tensors.items()})  # the config's shapes agree


def test_fused_shapes_are_checked_against_the_config(fam):
    ckpt = Checkpoint.open(fam("phi3"))
    bad = {**ckpt.config, "intermediate_size": 96}
    fused = "model.layers.0.mlp.gate_up_proj.weight"
    said = rf"intermediate_size=96, hidden_size=64 make {fused} \[192, 64\], but it is \[256, 64\]"
    with pytest.raises(CheckpointError, match=said):
        check_dims(bad, {fused: ckpt.tensors[fused].shape})
    qkv = "model.layers.0.self_attn.qkv_proj.weight"
    said = r"num_attention_heads=4, head_dim=16, num_key_value_heads=4, hidden_size=64 make .*qkv_proj"
    with pytest.raises(CheckpointError, match=said):
        check_dims({**ckpt.config, "num_key_value_heads": 4}, {qkv: ckpt.tensors[qkv].shape})


def test_fused_slices_take_each_piece_run():
    cfg = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 16}
    qkv = T.plan_slices("model.layers.0.self_attn.qkv_proj", (128, 64), 2, cfg)  # q 64 | k 32 | v 32
    assert [s.ranges() for s in qkv] == [((0, 32), (64, 80), (96, 112)), ((32, 64), (80, 96), (112, 128))]
    assert qkv[1].shape((128, 64)) == (64, 64) and qkv[1].source_ranges(20, 40) == [(52, 64), (80, 88)]
    gu = T.plan_slices("model.layers.0.mlp.gate_up_proj", (256, 64), 2, cfg)
    assert [s.ranges() for s in gu] == [((0, 64), (128, 192)), ((64, 128), (192, 256))]
    assert T.Slice.from_dict(gu[1].as_dict()) == gu[1]
    with pytest.raises(ShapeError, match=r"qkv_proj \(piece 1\): num_key_value_heads=2 .* tp=4"):
        T.plan_slices("model.layers.0.self_attn.qkv_proj", (128, 64), 4, cfg)


def test_phi3_tp_ranks_compute_the_unsplit_block(fam):
    """Each rank's attention (its q|k|v heads, its o columns) and MLP (its gate|up rows, its down
    columns), summed over ranks as the all-reduce does, is the whole block's: an even cut of the
    fused N would hand rank 0 all of q and rank 1 all of k|v, and this would fail."""
    ckpt = Checkpoint.open(fam("phi3"))
    cfg = ModelConfig.from_hf_config(ckpt.config)
    x = torch.randn(2, 6, cfg.hidden, generator=torch.Generator().manual_seed(0))
    cos, sin = rope_tables(cfg, 6)
    for cls, names, shrink in ((Attention, ("self_attn.qkv_proj", "self_attn.o_proj"), ("n_heads", "n_kv_heads")),
                               (MLP, ("mlp.gate_up_proj", "mlp.down_proj"), ("intermediate",))):
        state = {n.partition(".")[2] + ".weight": ckpt.read(f"model.layers.0.{n}.weight").float() for n in names}
        full = cls(cfg)
        full.load_state_dict(state)
        rank_cfg = ModelConfig(**{**cfg.__dict__, **{k: getattr(cfg, k) // 2 for k in shrink}})
        total = 0
        for r in range(2):
            part = cls(rank_cfg)
            part.load_state_dict({k: T.split_plain(f"model.layers.0.{names[0].partition('.')[0]}.{k}", v, 2,
                                                   ckpt.config)[r] for k, v in state.items()})
            total = total + (part(x, cos, sin) if cls is Attention else part(x))
        with torch.no_grad():
            want = full(x, cos, sin) if cls is Attention else full(x)
            torch.testing.assert_close(total, want, rtol=1e-5, atol=1e-5)


@needs_layouts
@pytest.mark.parametrize("fmt,params", FORMATS, ids=[f for f, _ in FORMATS])
@pytest.mark.parametrize("name", NEW)
def test_emulated_packed_logits_match_the_reference(fam, tmp_path, name, fmt, params):
    _, src = fam(name, fmt, params)
    pack(src, tmp_path / "p", arch=("sm80", "sm90"))
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loose = reference_model(src, None)(ids)
        for arch in ("sm80", "sm90"):
            folder = tmp_path / "p" / arch
            ref, got = reference_model(src, folder)(ids), emulated_model(folder)(ids)
            assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-4, arch
            # near the weights-only model too (fp8's per-token activation rounding, through Gemma's
            # sandwich norms and a logit cap of 2, is the widest: ~0.2)
            assert ((got - loose).abs().max() / loose.abs().max()).item() < 0.3, arch


def _pieces(t: torch.Tensor, sl: T.Slice) -> list[torch.Tensor]:
    out, at = [], 0
    for a, b in sl.ranges():
        out.append(t[at:at + b - a])
        at += b - a
    return out


@needs_layouts
@pytest.mark.parametrize("fmt,params", FORMATS[:1] + FORMATS[2:3], ids=["w4a16", "w8a8"])
@pytest.mark.parametrize("name", NEW)
def test_tp2_ranks_reassemble_and_verify(fam, tmp_path, name, fmt, params):
    from turbopack.packer.verify import verify

    _, src = fam(name, fmt, params)
    pack(src, tmp_path / "p", arch="sm90", tp=2)
    ranks = [tmp_path / "p" / f"rank{r}" for r in (0, 1)]
    qc, unpacked = QuantizedCheckpoint(src), [unpack_folder(f) for f in ranks]
    for module in qc.modules:
        want = qc.module(module).dequantize()
        info = [manifest(f)["tensors"][module] for f in ranks]
        sls = [T.Slice.from_dict(i["tp"]) for i in info]
        got = [qc.module(module).format.dequantize(u[module]) for u in unpacked]
        if sls[0].parallel is T.Parallel.ROW:
            assert torch.equal(torch.cat(got, 1), want), module
            continue
        whole = torch.empty_like(want)  # each rank's runs back where they came from
        for g, sl in zip(got, sls):
            for part, (a, b) in zip(_pieces(g, sl), sl.ranges()):
                whole[a:b] = part
        assert torch.equal(whole, want), module
    for n in qc.plain:
        assert bits_equal(QuantizedCheckpoint(src).plain_tensor(n), Checkpoint.open(ranks[1]).read(n)) or \
            T.rule_for(n.rpartition(".")[0]) is not None
    assert verify(tmp_path / "p", against=src).ok


def test_every_family_is_registered_with_its_linears():
    assert {"Qwen3ForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM"} <= set(FAMILIES)
    phi3 = FAMILIES["Phi3ForCausalLM"]
    assert [s.module for s in phi3.linears] == ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj",
                                                "mlp.down_proj"]
    assert FAMILIES["Gemma2ForCausalLM"].groups[2].producer == "pre_feedforward_layernorm"


def test_unsupported_lists_the_families(tmp_path: Path):
    from turbopack.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError) as err:
        family_of({"architectures": ["GPTNeoXForCausalLM"]})
    assert "Phi3ForCausalLM" in str(err.value) and "Gemma3ForCausalLM" in str(err.value)
    with pytest.raises(UnsupportedModelError, match="Gemma3ForCausalLM"):
        family_of({"architectures": ["Gemma3ForConditionalGeneration"]})
