"""`verify` catches what it claims to: a changed byte (by hash), a tensor that does not match its
layout's specs, and a packed module that does not unpack to the source (with --against)."""

from __future__ import annotations

import json

import pytest
import torch
from packhelp import manifest, model_dir, needs_layouts, quantized  # noqa: F401
from safetensors import safe_open
from safetensors.torch import save_file

from turbopack.checkpoint import sha256_file
from turbopack.errors import CheckpointError

pytestmark = needs_layouts


def pack(*args, **kwargs):
    from turbopack.packer.pack import pack as run

    return run(*args, progress=False, **kwargs)


@pytest.fixture
def packed(quantized, tmp_path):
    src = quantized("base", "w4a16", {"group_size": 32})
    pack(src, tmp_path / "p", arch="sm90")
    return src, tmp_path / "p"


def _rewrite(folder, change) -> None:
    """Apply change(tensors) to model.safetensors and re-record its hash, as a buggy packer would."""
    path = folder / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {n: f.get_tensor(n) for n in f.keys()}
    change(tensors)
    save_file(tensors, str(path), metadata=meta)
    m = manifest(folder)
    m["shards"]["model.safetensors"] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    (folder / "turbopack.json").write_text(json.dumps(m))


def test_flipped_byte_fails_naming_the_shard_and_hashes(packed):
    from turbopack.packer.verify import verify

    _, out = packed
    shard = out / "model.safetensors"
    expected = manifest(out)["shards"]["model.safetensors"]["sha256"]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x10
    shard.write_bytes(bytes(data))
    report = verify(out)
    assert not report.ok
    (problem,) = report.folders[0].problems
    assert "model.safetensors" in problem and expected in problem and sha256_file(shard) in problem


def test_unpack_mismatch_is_caught_only_against_the_source(packed):
    from turbopack.packer.verify import verify

    src, out = packed
    name = "model.layers.1.self_attn.v_proj.qweight"

    def bump(t):
        t[name] = t[name].clone()
        t[name].view(-1)[0] ^= 1

    _rewrite(out, bump)
    assert verify(out).ok  # hashes and shapes are consistent again
    report = verify(out, against=src)
    assert not report.ok and "model.layers.1.self_attn.v_proj.qweight" in report.folders[0].problems[0]


def test_wrong_shape_or_missing_tensor_is_reported(packed):
    from turbopack.packer.verify import verify

    _, out = packed
    _rewrite(out, lambda t: t.update({"model.layers.0.mlp.up_proj.scales": torch.zeros(3, dtype=torch.bfloat16)}))
    problems = verify(out).folders[0].problems
    assert len(problems) == 1 and "model.layers.0.mlp.up_proj.scales" in problems[0] and "expected" in problems[0]
    _rewrite(out, lambda t: t.pop("model.norm.weight"))
    assert any("model.norm.weight" in p for p in verify(out).folders[0].problems)


def test_against_must_be_a_quantized_folder(packed, model_dir):
    from turbopack.packer.verify import verify

    _, out = packed
    with pytest.raises(CheckpointError, match="not a quantized folder"):
        verify(out, against=model_dir("base"))
    with pytest.raises(CheckpointError, match="turbopack.json"):
        verify(model_dir("base"))


def test_verify_checks_a_quantized_folder_too(quantized, tmp_path):
    from turbopack.packer.verify import verify

    src = quantized("base", "w8a8", {})
    report = verify(src)
    assert report.ok and report.folders[0].tensors > 0
