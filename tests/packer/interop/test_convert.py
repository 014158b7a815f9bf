"""`turbopack convert`: AWQ gemm and GPTQ checkpoints written by an independent writer import
bit-exactly (dequantized weights identical), and what has no exact mapping is refused clearly."""

from __future__ import annotations

import json

import pytest
import torch
from foreign import write_awq, write_gptq
from safetensors.torch import load_file, save_file
from tinymodels import make_tiny_model

from turbopack.checkpoint.quantized import QuantizedCheckpoint
from turbopack.errors import TurbopackError
from turbopack.packer.interop.convert import convert


def check_exact(out, expect, fmt_name="w4a16", **params):
    qc = QuantizedCheckpoint(out)
    assert set(qc.modules) == set(expect)
    for module, w in expect.items():
        m = qc.module(module)
        assert m.format.name.value == fmt_name
        for k, v in params.items():
            assert getattr(m.format, k) == v, (module, k)
        assert torch.equal(m.dequantize(), w), module
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "turbopack" and cfg["packed"] is False
    return qc


@pytest.mark.parametrize("inter,group,expect_gs", [(96, 32, 32), (96, -1, 32), (128, 64, 64), (128, -1, 64)])
def test_awq_exact(tmp_path, inter, group, expect_gs):
    # K is 64 (hidden) or `inter`: per-channel scales regroup exactly to the largest group size
    # that divides every K (one folder holds one format)
    tiny = make_tiny_model(tmp_path / "tiny", intermediate_size=inter)
    expect = write_awq(tiny, tmp_path / "awq", group=group)
    res = convert(tmp_path / "awq", tmp_path / "out", progress=False)
    assert res.source_method == "awq" and len(res.quantized) == 14
    qc = check_exact(tmp_path / "out", expect, group_size=expect_gs, sym=False, scale_dtype="float16")
    src = load_file(str(tmp_path / "awq" / "model.safetensors"))
    for name in qc.plain:  # embeddings, norms, lm_head copied as they are
        assert torch.equal(qc.plain_tensor(name), src[name])


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("sym", [False, True])
def test_gptq_4bit_exact(tiny_llama, tmp_path, sym, v2):
    expect = write_gptq(tiny_llama, tmp_path / "gptq", group=32, sym=sym, v2=v2)
    convert(tmp_path / "gptq", tmp_path / "out", progress=False)
    check_exact(tmp_path / "out", expect, group_size=32, sym=sym, scale_dtype="float16")


def test_gptq_act_order_blocks_exact(tiny_llama, tmp_path):
    # act-order that moves whole aligned 32-column blocks keeps every block in one group: exact
    expect = write_gptq(tiny_llama, tmp_path / "gptq", group=32, g_idx="blocks")
    convert(tmp_path / "gptq", tmp_path / "out", progress=False)
    check_exact(tmp_path / "out", expect, group_size=32)


def test_gptq_act_order_refused(tiny_llama, tmp_path):
    write_gptq(tiny_llama, tmp_path / "gptq", group=32, g_idx="perm")
    with pytest.raises(TurbopackError, match="act-order.*contiguous"):
        convert(tmp_path / "gptq", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_gptq_8bit_per_channel_exact(tiny_llama, tmp_path):
    expect = write_gptq(tiny_llama, tmp_path / "gptq", group=-1, bits=8, sym=True)
    convert(tmp_path / "gptq", tmp_path / "out", progress=False)
    check_exact(tmp_path / "out", expect, fmt_name="w8a16")


def test_gptq_8bit_grouped_refused(tiny_llama, tmp_path):
    write_gptq(tiny_llama, tmp_path / "gptq", group=32, bits=8, sym=True)
    with pytest.raises(TurbopackError, match="symmetric per output channel"):
        convert(tmp_path / "gptq", tmp_path / "out", progress=False)


def test_gptq_v1_zero_overflow_refused(tiny_llama, tmp_path):
    write_gptq(tiny_llama, tmp_path / "gptq", group=32)
    path = tmp_path / "gptq" / "model.safetensors"
    sd = load_file(str(path))
    sd["model.layers.0.mlp.up_proj.qzeros"][0, 0] |= 0xF  # a stored nibble 15 reads back as zero 16
    save_file(sd, str(path))
    with pytest.raises(TurbopackError, match="up_proj.*zero point reads as 16"):
        convert(tmp_path / "gptq", tmp_path / "out", progress=False)


def test_side_config_file_and_errors(tiny_llama, tmp_path):
    write_gptq(tiny_llama, tmp_path / "gptq", group=32)
    cfg_path = tmp_path / "gptq" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    qc = cfg.pop("quantization_config")
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(TurbopackError, match="not quantized"):
        convert(tmp_path / "gptq", tmp_path / "out", progress=False)
    qc.pop("quant_method")  # AutoGPTQ's quantize_config.json has no quant_method
    (tmp_path / "gptq" / "quantize_config.json").write_text(json.dumps(qc))
    assert convert(tmp_path / "gptq", tmp_path / "out", progress=False).source_method == "gptq"
    cfg["quantization_config"] = {"quant_method": "bitsandbytes"}
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(TurbopackError, match="bitsandbytes.*registered: awq, compressed-tensors, gptq"):
        convert(tmp_path / "gptq", tmp_path / "out2", progress=False)
