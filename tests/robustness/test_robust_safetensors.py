"""Bad safetensors input: every case is refused by `turbopack quantize` before anything is written,
with one line naming the file (and tensor) and the fix, exit 2, nothing left next to OUT, and the
input unchanged."""

from __future__ import annotations

import json
from pathlib import Path

from robusthelp import load_state, refused, save_state, split_safetensors, src, tensors_by_offset, write_safetensors_raw  # noqa: F401

FIX = "re-download or re-export it"


def quantize_argv(model: Path, out: Path) -> list:
    return ["quantize", model, "-o", out, "-f", "w8a16"]


def _mutate(src: Path, fn) -> Path:
    path = src / "model.safetensors"
    path.write_bytes(fn(path.read_bytes()))
    return path


def test_truncated_file_mid_data(capsys, src, tmp_path):
    _mutate(src, lambda raw: raw[:-1000])
    refused(capsys, quantize_argv(src, tmp_path / "out"), src, tmp_path / "out",
            "model.safetensors", "tensor 'model.layers.1.self_attn.v_proj.weight'", "out of range", "truncated", FIX)


def test_truncated_before_the_header(capsys, src, tmp_path):
    _mutate(src, lambda raw: raw[:5])
    refused(capsys, quantize_argv(src, tmp_path / "out"), src, tmp_path / "out",
            "model.safetensors", "truncated safetensors file (5 bytes)", FIX)


def test_header_length_past_the_end(capsys, src, tmp_path):
    _mutate(src, lambda raw: (10**12).to_bytes(8, "little") + raw[8:])
    refused(capsys, quantize_argv(src, tmp_path / "out"), src, tmp_path / "out",
            "model.safetensors", "header length 1000000000000 runs past the end", FIX)


def test_header_not_json(capsys, src, tmp_path):
    _mutate(src, lambda raw: raw[:8] + b"{this is not json" + raw[25:])
    refused(capsys, quantize_argv(src, tmp_path / "out"), src, tmp_path / "out",
            "model.safetensors", "not valid JSON", FIX)


def test_header_not_an_object(capsys, src, tmp_path):
    _, data = split_safetensors(src / "model.safetensors")
    write_safetensors_raw(src / "model.safetensors", b"[1, 2, 3]", data)
    refused(capsys, quantize_argv(src, tmp_path / "out"), src, tmp_path / "out",
            "model.safetensors", "not a JSON object", FIX)


def _edit_header(src: Path, fn) -> None:
    path = src / "model.safetensors"
    header, data = split_safetensors(path)
    fn(header, tensors_by_offset(header))
    write_safetensors_raw(path, header, data)


def test_offsets_overlapping(capsys, src, tmp_path):
    def shift_back(h, order):  # the 2nd tensor starts 2 bytes inside the 1st
        b, e = h[order[1]]["data_offsets"]
        h[order[1]]["data_offsets"] = [b - 2, e - 2]

    _edit_header(src, shift_back)
    refused(capsys, quantize_argv(src, tmp_path / "out"), src, tmp_path / "out",
            "model.safetensors", "'lm_head.weight' and 'model.embed_tokens.weight' overlap", FIX)


def test_offsets_out_of_range(capsys, src, tmp_path):
    def past_end(h, order):
        b, e = h[order[-1]]["data_offsets"]
        h[order[-1]]["data_offsets"] = [b + 10**6, e + 10**6]

    _edit_header(src, past_end)
    refused(capsys, quantize_argv(src, tmp_path / "out"), src, tmp_path / "out",
            "model.safetensors", "'model.norm.weight' data offsets", "out of range", FIX)


def test_offsets_leave_a_hole(capsys, src, tmp_path):
    """safetensors itself refuses a data section with unused bytes; so do we, before reading."""
    def drop(h, order):
        del h[order[2]]

    _edit_header(src, drop)
    refused(capsys, quantize_argv(src, tmp_path / "out"), src, tmp_path / "out",
            "model.safetensors", "unused bytes before tensor 'model.layers.0.mlp.down_proj.weight'", FIX)


def test_dtype_disagrees_with_byte_size(capsys, src, tmp_path):
    _edit_header(src, lambda h, order: h["model.layers.0.self_attn.q_proj.weight"].update(dtype="F32"))
    refused(
        capsys,
        quantize_argv(src, tmp_path / "out"),
        src,
        tmp_path / "out",
        "model.safetensors",
        "'model.layers.0.self_attn.q_proj.weight' is F32 [64, 64] = 16384 bytes but its offsets span 8192",
        FIX,
    )


def test_shape_disagrees_with_byte_size(capsys, src, tmp_path):
    _edit_header(src, lambda h, order: h["model.layers.1.mlp.up_proj.weight"].update(shape=[96, 65]))
    refused(capsys, quantize_argv(src, tmp_path / "out"), src, tmp_path / "out",
            "model.safetensors", "'model.layers.1.mlp.up_proj.weight' is BF16 [96, 65]", FIX)


def test_shape_not_integers(capsys, src, tmp_path):
    _edit_header(src, lambda h, order: h["model.norm.weight"].update(shape=[64.0]))
    refused(capsys, quantize_argv(src, tmp_path / "out"), src, tmp_path / "out",
            "model.safetensors", "'model.norm.weight' has a malformed header entry", FIX)


def test_duplicate_tensor_names(capsys, src, tmp_path):
    """The same key twice: json.loads would silently keep the last; the header is corrupt."""
    path = src / "model.safetensors"
    header, data = split_safetensors(path)
    items = list(header.items())
    dup = next(kv for kv in items if kv[0] == "model.norm.weight")
    blob = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in [*items, dup]) + "}"
    write_safetensors_raw(path, blob.encode(), data)
    refused(capsys, quantize_argv(src, tmp_path / "out"), src, tmp_path / "out",
            "model.safetensors", "names 'model.norm.weight' twice", FIX)


def test_metadata_not_strings(capsys, src, tmp_path):
    _edit_header(src, lambda h, order: h.update(__metadata__={"format": 1}))
    refused(capsys, quantize_argv(src, tmp_path / "out"), src, tmp_path / "out",
            "model.safetensors", "__metadata__", FIX)


def _shard(src: Path) -> tuple[Path, Path]:
    """Split the single model.safetensors into two shards and an index (HF's sharded layout)."""
    state = load_state(src / "model.safetensors")
    (src / "model.safetensors").unlink()
    names = sorted(state)
    half = len(names) // 2
    files = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    save_state(src / files[0], {n: state[n] for n in names[:half]})
    save_state(src / files[1], {n: state[n] for n in names[half:]})
    index = {"metadata": {}, "weight_map": {n: files[i >= half] for i, n in enumerate(names)}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    return src / files[0], src / files[1]


def test_sharded_copy_is_fine(capsys, src, tmp_path):
    """Control for the two index cases below: the re-sharded model itself quantizes."""
    from robusthelp import run_cli

    _shard(src)
    rc, _, err = run_cli(capsys, *quantize_argv(src, tmp_path / "out"))
    assert rc == 0, err


def test_index_names_a_missing_shard(capsys, src, tmp_path):
    _, second = _shard(src)
    second.unlink()
    refused(capsys, quantize_argv(src, tmp_path / "out"), src, tmp_path / "out",
            "model.safetensors.index.json", "names shard model-00002-of-00002.safetensors which is missing",
            "re-download")


def test_tensor_in_two_shards(capsys, src, tmp_path):
    first, second = _shard(src)
    a, b = load_state(first), load_state(second)
    b["model.embed_tokens.weight"] = a["model.embed_tokens.weight"]
    save_state(second, b)
    refused(
        capsys,
        quantize_argv(src, tmp_path / "out"),
        src,
        tmp_path / "out",
        "model-00002-of-00002.safetensors",
        "'model.embed_tokens.weight' also appears in model-00001-of-00002.safetensors",
        "inconsistent",
    )
