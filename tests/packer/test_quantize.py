"""`quantize` end to end on tiny random HF models: output readable by HF tooling, exact against
the format applied in memory, streaming in chunks gives the same bytes, bad inputs fail cleanly."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from turbopack.checkpoint.quantized import QuantizedCheckpoint
from turbopack.errors import BadTensorError, CheckpointError, OutputExistsError, ShapeError, UnsupportedModelError
from turbopack.formats import get_format
from turbopack.packer import folder as qmod
from turbopack.packer.quantize import quantize

CASES = [("w4a16", {"group_size": 32}), ("w4a16", {"group_size": 32, "sym": True}), ("w8a16", {}),
         ("w8a8", {}), ("fp8", {}), ("fp8", {"per_tensor": True})]


def tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("fmt_name,params", CASES)
def test_quantize_formats(tiny_llama, tmp_path, fmt_name, params):
    before = tree_hash(tiny_llama)
    out = tmp_path / "q"
    res = quantize(tiny_llama, out, fmt_name, progress=False, **params)
    assert tree_hash(tiny_llama) == before  # input untouched
    assert len(res.quantized) == 14 and "model.embed_tokens.weight" in res.kept
    fmt = get_format(fmt_name, **params)
    qc = QuantizedCheckpoint(out)
    original = load_file(str(tiny_llama / "model.safetensors"))
    for module in qc.modules:
        m = qc.module(module)
        expect = fmt.quantize(original[module + ".weight"])
        for k, v in expect.items():
            assert torch.equal(m.tensors[k].view(torch.uint8), v.view(torch.uint8)), (module, k)
    for name in qc.plain:
        assert torch.equal(qc.plain_tensor(name), original[name])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "turbopack"
    assert cfg["quantization_config"]["format"] == fmt_name
    manifest = json.loads((out / "turbopack.json").read_text())
    assert manifest["kind"] == "quantized" and "model.safetensors" in manifest["shards"]
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert f.metadata()["format"] == fmt_name


def test_hf_tooling_reads_output(tiny_llama, tmp_path):
    import transformers

    out = tmp_path / "q"
    quantize(tiny_llama, out, "w4a16", group_size=32, progress=False)
    cfg = transformers.AutoConfig.from_pretrained(out)
    assert cfg.quantization_config["format"] == "w4a16"
    assert (out / "generation_config.json").exists()


def test_chunked_streaming_gives_same_bytes(tiny_llama, tmp_path, monkeypatch):
    quantize(tiny_llama, tmp_path / "a", "w4a16", group_size=32, progress=False)
    monkeypatch.setattr(qmod, "CHUNK_BYTES", 100)  # a few rows per chunk
    quantize(tiny_llama, tmp_path / "b", "w4a16", group_size=32, progress=False)
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()


def test_sharded_output_and_qwen2_biases(tiny_qwen2, tmp_path):
    out = tmp_path / "q"
    quantize(tiny_qwen2, out, "w8a16", max_shard_bytes=20_000, progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert "model.layers.0.self_attn.q_proj.bias" in index["weight_map"]
    qc = QuantizedCheckpoint(out)
    assert "model.layers.1.mlp.down_proj" in qc.modules


def test_ignore_and_lm_head(tiny_llama, tmp_path):
    res = quantize(
        tiny_llama, tmp_path / "q", "w8a16", ignore=("model.layers.0.*",), include_lm_head=True, progress=False
    )
    assert "lm_head.weight" in res.quantized
    assert res.kept["model.layers.0.mlp.up_proj.weight"] == "--ignore model.layers.0.*"
    manifest = json.loads((tmp_path / "q/turbopack.json").read_text())
    assert "model.layers.0.mlp.up_proj.weight" in manifest["unquantized"]


def test_bad_inputs_fail_cleanly(tiny_llama, tmp_path):
    out = tmp_path / "q"
    with pytest.raises(ShapeError, match=r"down_proj.weight: K=96 is not a multiple of group size 64"):
        quantize(tiny_llama, out, "w4a16", group_size=64, progress=False)
    assert not out.exists()
    out.mkdir()
    with pytest.raises(OutputExistsError, match="--force"):
        quantize(tiny_llama, out, "w8a16", progress=False)
    with pytest.raises(OutputExistsError, match="output is the input"):
        quantize(tiny_llama, tiny_llama, "w8a16", force=True, progress=False)
    with pytest.raises(CheckpointError, match="no such model folder"):
        quantize(tmp_path / "nope", tmp_path / "o2", progress=False)


def test_nan_weight_leaves_nothing(tiny_llama, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny_llama, src)
    sd = load_file(str(src / "model.safetensors"))
    sd["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(sd, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(BadTensorError, match=r"model.layers.1.mlp.up_proj.weight: 1 NaN"):
        quantize(src, tmp_path / "q", "w8a16", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_pickle_and_architecture_refused(tiny_llama, tmp_path):
    pk = tmp_path / "pk"
    pk.mkdir()
    shutil.copy(tiny_llama / "config.json", pk)
    (pk / "pytorch_model.bin").write_bytes(b"\x80\x04not-really-a-pickle")
    with pytest.raises(CheckpointError, match="never unpickles"):
        quantize(pk, tmp_path / "q", progress=False)
    gpt = tmp_path / "gpt"
    shutil.copytree(tiny_llama, gpt)
    cfg = json.loads((gpt / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (gpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel is not supported; supported: LlamaForCausalLM"):
        quantize(gpt, tmp_path / "q", progress=False)


def test_nvfp4_fused_linears_share_their_global_scale(tiny_llama, tmp_path, monkeypatch):
    """q|k|v and gate|up get one global scale each (vLLM needs it for its fused linears; our runtime
    fuses them only then), from the max |w| over the group; o and down their own."""
    from turbopack.inference.loader import load
    from turbopack.inference.qlinear import concat
    from turbopack.packer.pack import pack

    out = tmp_path / "q"
    quantize(tiny_llama, out, "nvfp4", progress=False)
    fmt, qc = get_format("nvfp4"), QuantizedCheckpoint(out)
    original = load_file(str(tiny_llama / "model.safetensors"))
    groups = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gu", "up_proj": "gu"}
    for module in qc.modules:
        layer, proj = module.rsplit(".", 1)[0].rsplit(".", 1)[0], module.rsplit(".", 1)[1]
        members = [m for m in qc.modules if m.startswith(layer) and groups.get(m.rsplit(".", 1)[1], m) ==
                   groups.get(proj, module)]
        assert len(members) == {"qkv": 3, "gu": 2}.get(groups.get(proj), 1), module
        stats = fmt.tensor_stats([original[m + ".weight"] for m in members])
        for k, v in fmt.quantize(original[module + ".weight"], stats).items():
            assert torch.equal(qc.module(module).tensors[k].view(torch.uint8), v.view(torch.uint8)), (module, k)
    monkeypatch.setattr(qmod, "CHUNK_BYTES", 100)  # a few rows per chunk: the same bytes
    quantize(tiny_llama, tmp_path / "b", "nvfp4", progress=False)
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()
    monkeypatch.undo()
    pack(out, tmp_path / "p", arch=("sm90",), progress=False)
    from turbopack.inference.model import Attention

    net = load(tmp_path / "p", device="cpu", dtype=torch.float32).model
    attn = next(m for m in net.modules() if isinstance(m, Attention))
    assert concat([attn.q_proj, attn.k_proj, attn.v_proj]) is not None
