"""Streaming writer output is read back by the safetensors library; the header reader rejects
corrupt files with one-line errors."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from turbopack.checkpoint import ShardedWriter, ShardPlan, TensorEntry, atomic_output, read_header
from turbopack.checkpoint.safetensors_stream import StreamingWriter
from turbopack.errors import CheckpointError, OutputExistsError

DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.int8, torch.uint8, torch.int32, torch.float8_e4m3fn]


def test_streaming_writer_roundtrip_in_row_chunks(tmp_path):
    torch.manual_seed(0)
    tensors = {f"t{i}": torch.randn(7, 5).to(dt) for i, dt in enumerate(DTYPES)}
    tensors["scalarish"] = torch.randn(1)
    entries = [TensorEntry(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    path = tmp_path / "a.safetensors"
    with StreamingWriter(path, entries, {"format": "w4a16"}) as w:
        for name, t in reversed(tensors.items()):  # any order, in chunks
            for r in range(0, t.shape[0], 3):
                w.write_rows(name, r, t[r:r + 3])
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "w4a16"}
        for name, t in tensors.items():
            assert torch.equal(f.get_tensor(name).view(torch.uint8), t.view(torch.uint8))
    entries2, meta = read_header(path)
    assert set(entries2) == set(tensors) and meta == {"format": "w4a16"}


def test_unwritten_tensor_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="never fully written"):
        with StreamingWriter(tmp_path / "a.safetensors", [TensorEntry("x", torch.float32, (4,))]) as w:
            w.write_rows("x", 0, torch.zeros(2))


def test_sharded_plan_and_index(tmp_path):
    jobs = [[TensorEntry(f"w{i}", torch.float32, (256,))] for i in range(5)]  # 1 KiB each
    plan = ShardPlan.build(jobs, max_shard_bytes=2048)
    assert plan.files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    w = ShardedWriter(tmp_path, plan)
    for i in range(5):
        w.write(f"w{i}", torch.full((256,), float(i)))
    shards = w.finish()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["w4"] == plan.files[2]
    assert all(len(s["sha256"]) == 64 for s in shards.values())


def _corrupt(tmp_path, mutate):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.randn(4, 4), "b": torch.randn(4)}, str(path))
    raw = bytearray(path.read_bytes())
    path.write_bytes(mutate(raw))
    return path


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r[:5], "truncated safetensors file"),
    (lambda r: struct.pack("<Q", 10**9) + r[8:], "runs past the end"),
    (lambda r: r[:8] + b"{not json" + r[17:], "not valid JSON"),
    (lambda r: r[:-8], "out of range"),
])
def test_corrupt_headers(tmp_path, mutate, match):
    with pytest.raises(CheckpointError, match=match):
        read_header(_corrupt(tmp_path, mutate))


def _with_header(tmp_path, header: dict, data: bytes):
    blob = json.dumps(header).encode()
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def test_overlap_and_size_mismatch(tmp_path):
    h = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    with pytest.raises(CheckpointError, match="overlap"):
        read_header(_with_header(tmp_path, h, bytes(16)))
    h = {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}
    with pytest.raises(CheckpointError, match="12 bytes but its offsets span 8"):
        read_header(_with_header(tmp_path, h, bytes(8)))


def test_atomic_output(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError):
        with atomic_output(out) as tmp:
            (tmp / "x").write_text("partial")
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_output(out) as tmp:
        (tmp / "x").write_text("v1")
    with pytest.raises(OutputExistsError, match="--force"):
        with atomic_output(out):
            pass
    with atomic_output(out, force=True) as tmp:
        (tmp / "x").write_text("v2")
    assert (out / "x").read_text() == "v2" and [p.name for p in tmp_path.iterdir()] == ["out"]
