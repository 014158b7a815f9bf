"""Tensor-parallel packing: per-rank slices are exactly the Megatron split of the source, bad splits
are refused naming the layer and the fix, before anything is written."""

from __future__ import annotations

import json

import pytest
import torch
from packhelp import bits_equal, manifest, model_dir, needs_layouts, quantized, read_all, temp_leftovers, unpack_folder  # noqa: F401

from turbopack.checkpoint.quantized import QuantizedCheckpoint
from turbopack.errors import ShapeError
from turbopack.formats import get_format
from turbopack.packer import tp as T

CONFIG = {"num_attention_heads": 4, "num_key_value_heads": 2}


def pack(*args, **kwargs):
    from turbopack.packer.pack import pack as run

    return run(*args, progress=False, **kwargs)


# --- the split rules, without layouts ------------------------------------------------------------


def test_rules_follow_llama_engines():
    assert T.rule_for("model.layers.3.self_attn.q_proj").parallel is T.Parallel.COLUMN
    assert T.rule_for("model.layers.3.self_attn.k_proj").unit == "num_key_value_heads"
    assert T.rule_for("model.layers.0.self_attn.o_proj").parallel is T.Parallel.ROW
    assert T.rule_for("model.layers.0.mlp.down_proj").parallel is T.Parallel.ROW
    assert T.rule_for("model.layers.0.mlp.up_proj").parallel is T.Parallel.COLUMN
    for name in ("lm_head", "model.embed_tokens", "model.norm", "model.layers.0.input_layernorm"):
        assert T.rule_for(name) is None


def test_slices_by_heads_and_errors_name_the_layer():
    q = T.plan_slices("model.layers.0.self_attn.q_proj", (64, 64), 2, CONFIG)
    assert [(s.start, s.stop) for s in q] == [(0, 32), (32, 64)] and q[1].shape((64, 64)) == (32, 64)
    o = T.plan_slices("model.layers.0.self_attn.o_proj", (64, 64), 2, CONFIG)
    assert o[0].parallel is T.Parallel.ROW and o[1].shape((64, 64)) == (64, 32)
    assert [s.parallel for s in T.plan_slices("lm_head", (128, 64), 2, CONFIG)] == [T.Parallel.REPLICATED] * 2
    with pytest.raises(ShapeError, match=r"model.layers.0.self_attn.k_proj: num_key_value_heads=2 .* tp=4"):
        T.plan_slices("model.layers.0.self_attn.k_proj", (32, 64), 4, CONFIG)
    with pytest.raises(ShapeError, match=r"mlp.gate_proj: N=96 does not split into tp=5"):
        T.plan_slices("model.layers.0.mlp.gate_proj", (96, 64), 5, CONFIG)


def test_group_check_lists_the_group_sizes_that_work():
    fmt = get_format("w4a16", group_size=64)
    sl = T.plan_slices("model.layers.1.mlp.down_proj", (64, 192), 2, CONFIG)[0]
    with pytest.raises(ShapeError) as err:
        T.check_group("model.layers.1.mlp.down_proj", fmt, sl, (64, 192))
    msg = str(err.value)
    assert "model.layers.1.mlp.down_proj" in msg and "96" in msg and "[32]" in msg and "\n" not in msg
    T.check_group("model.layers.1.mlp.down_proj", get_format("w4a16", group_size=32), sl, (64, 192))
    T.check_group("model.layers.1.mlp.down_proj", get_format("w8a16"), sl, (64, 192))  # no groups


def test_split_quantized_cuts_bytes_and_groups_along_k():
    fmt = get_format("w4a16", group_size=32)
    w = torch.randn(8, 128)
    q = fmt.quantize(w)
    sl = T.Slice(T.Parallel.ROW, 1, 2, 64, 128)
    part = T.split_quantized("m", fmt, q, (8, 128), sl)
    assert bits_equal(part["qweight"], fmt.quantize(w[:, 64:])["qweight"])
    assert torch.equal(fmt.dequantize(part), fmt.dequantize(q)[:, 64:])
    col = T.split_quantized("m", fmt, q, (8, 128), T.Slice(T.Parallel.COLUMN, 0, 2, 0, 4))
    assert torch.equal(fmt.dequantize(col), fmt.dequantize(q)[:4])
    fp8 = get_format("fp8", per_tensor=True)
    qf = fp8.quantize(w, fp8.tensor_stats([w]))
    rows = T.split_quantized("m", fp8, qf, (8, 128), sl)
    assert rows["scales"] is qf["scales"] and rows["qweight"].shape == (8, 64)  # tensor-wide scale replicated


def test_split_plain_bias_and_weights():
    bias = torch.arange(64.0)
    b0, b1 = T.split_plain("model.layers.0.self_attn.q_proj.bias", bias, 2, CONFIG)
    assert torch.equal(torch.cat([b0, b1]), bias) and b0.shape == (32,)
    assert all(t is bias for t in T.split_plain("model.layers.0.self_attn.o_proj.bias", bias, 2, CONFIG))
    w = torch.randn(64, 96)
    parts = T.split_plain("model.layers.0.mlp.down_proj.weight", w, 2, CONFIG)
    assert torch.equal(torch.cat(parts, 1), w)
    assert T.plain_shapes("model.layers.0.mlp.down_proj.weight", (64, 96), 2, CONFIG) == [(64, 48), (64, 48)]
    assert T.plain_shapes("model.embed_tokens.weight", (128, 64), 2, CONFIG) == [(128, 64)] * 2


# --- packing with tp ------------------------------------------------------------------------------


def _reassemble(rank_tensors: list[dict], module: str, fmt) -> torch.Tensor:
    dim = 1 if T.rule_for(module) and T.rule_for(module).parallel is T.Parallel.ROW else 0
    return torch.cat([fmt.dequantize(r[module]) for r in rank_tensors], dim)


@needs_layouts
@pytest.mark.parametrize(
    "fmt_name,params", [("w4a16", {"group_size": 32}), ("w8a8", {}), ("fp8", {"per_tensor": True})]
)
def test_tp2_ranks_reassemble_to_the_source(quantized, tmp_path, fmt_name, params):
    from turbopack.packer.verify import verify

    src = quantized("tp", fmt_name, params)
    qc = QuantizedCheckpoint(src)
    res = pack(src, tmp_path / "p", arch=("sm80", "sm90"), tp=2)
    assert res.folders == [tmp_path / "p" / a / f"rank{r}" for a in ("sm80", "sm90") for r in (0, 1)]
    for arch in ("sm80", "sm90"):
        ranks = [tmp_path / "p" / arch / f"rank{r}" for r in (0, 1)]
        unpacked = [unpack_folder(f) for f in ranks]
        plain = [read_all(f) for f in ranks]
        for module in qc.modules:
            qm = qc.module(module)
            assert torch.equal(_reassemble(unpacked, module, qm.format), qm.dequantize()), module
        q0 = manifest(ranks[0])["tensors"]["model.layers.0.self_attn.q_proj"]
        assert q0["shape"] == [32, 64] and q0["full_shape"] == [64, 64] and q0["tp"]["parallel"] == "column"
        assert manifest(ranks[1])["tensors"]["model.layers.0.mlp.down_proj"]["shape"] == [64, 96]
        for name in qc.plain:  # embeddings, norms, lm_head: the same on every rank
            assert bits_equal(plain[0][name], qc.plain_tensor(name)) and bits_equal(
                plain[1][name], qc.plain_tensor(name)
            )
        cfg = json.loads((ranks[1] / "config.json").read_text())["quantization_config"]
        assert cfg["tp"] == 2 and cfg["tp_rank"] == 1 and cfg["arch"] == arch
    report = verify(tmp_path / "p", against=src)
    assert report.ok and len(report.folders) == 4


@needs_layouts
def test_tp2_splits_qkv_biases(quantized, tmp_path):
    from turbopack.packer.verify import verify

    src = quantized("qwen2_tp", "w8a16", {})
    pack(src, tmp_path / "p", arch="sm90", tp=2)
    ranks = [read_all(tmp_path / "p" / f"rank{r}") for r in (0, 1)]
    full = QuantizedCheckpoint(src).plain_tensor("model.layers.0.self_attn.k_proj.bias")
    assert ranks[0]["model.layers.0.self_attn.k_proj.bias"].shape == (16,)
    assert torch.equal(torch.cat([r["model.layers.0.self_attn.k_proj.bias"] for r in ranks]), full)
    assert verify(tmp_path / "p", against=src).ok


@needs_layouts
def test_tp_group_size_error_names_layer_and_writes_nothing(quantized, tmp_path):
    src = quantized("tp", "w4a16", {"group_size": 64})
    with pytest.raises(ShapeError) as err:
        pack(src, tmp_path / "p", arch="sm90", tp=2)
    msg = str(err.value)
    assert "mlp.down_proj" in msg and "group size 64" in msg and "[32]" in msg
    assert not (tmp_path / "p").exists() and temp_leftovers(tmp_path) == []
    with pytest.raises(ShapeError, match="num_key_value_heads=2"):
        pack(quantized("tp", "w8a16", {}), tmp_path / "p", arch="sm90", tp=3)
    assert not (tmp_path / "p").exists() and temp_leftovers(tmp_path) == []


@needs_layouts
def test_tp_chunked_packing_gives_the_same_bytes(quantized, tmp_path):
    src = quantized("tp", "w4a16", {"group_size": 32})
    pack(src, tmp_path / "a", arch="sm90", tp=2)
    pack(src, tmp_path / "b", arch="sm90", tp=2, chunk_bytes=1)
    for r in (0, 1):
        a, b = manifest(tmp_path / "a" / f"rank{r}"), manifest(tmp_path / "b" / f"rank{r}")
        assert a["shards"] == b["shards"]


@needs_layouts
def test_tp_splits_linears_left_unquantized(model_dir, tmp_path):
    from turbopack.packer.quantize import quantize
    from turbopack.packer.verify import verify

    src = tmp_path / "q"
    quantize(model_dir("tp"), src, "w8a16", ignore=("model.layers.0.mlp.down_proj", "*.q_proj"), progress=False)
    full = QuantizedCheckpoint(src)
    for chunk_bytes in (64 << 20, 1):  # whole tensors, then one row at a time
        out = tmp_path / f"p{chunk_bytes}"
        pack(src, out, arch="sm90", tp=2, chunk_bytes=chunk_bytes)
        ranks = [read_all(out / f"rank{r}") for r in (0, 1)]
        down, q = "model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight"
        assert ranks[0][down].shape == (64, 96) and ranks[1][q].shape == (32, 64)
        assert torch.equal(torch.cat([r[down] for r in ranks], 1), full.plain_tensor(down))
        assert torch.equal(torch.cat([r[q] for r in ranks], 0), full.plain_tensor(q))
        assert verify(out, against=src).ok
