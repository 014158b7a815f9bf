"""Fuzzing the readers of untrusted files: the safetensors header reader, the manifest reader and
config.json parsing. Any input gives a result or a TurbopackError (one clean line), never another
exception; a safetensors file our reader accepts must also load in the `safetensors` library, so
nothing fails later with its error instead of ours.

Bounded for CI: ~200 examples per test, no deadline (the whole file runs in a few seconds).
"""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from turbopack.checkpoint import read_header, read_manifest
from turbopack.errors import TurbopackError

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_DIR = Path(tempfile.mkdtemp(prefix="turbopack-fuzz-"))

json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _clean(msg: str) -> None:
    assert msg and "\n" not in msg, repr(msg)


def _file(name: str, data: bytes) -> Path:
    path = _DIR / name
    path.write_bytes(data)
    return path


# --- safetensors headers ---------------------------------------------------------------------------

DTYPES = ["F32", "F16", "BF16", "I8", "U8", "I32", "I64", "F64", "BOOL", "F8_E4M3", "F8_E5M2", "I16"]
ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "I32": 4, "I64": 8, "F64": 8, "BOOL": 1,
            "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2}


def _sometimes(draw, good, bad):
    """``good`` 7 times in 8, else a draw from the strategy ``bad``: most files have one or two faults."""
    return draw(bad) if draw(st.integers(0, 7)) == 0 else good


@st.composite
def safetensors_files(draw) -> bytes:
    """Well-formed files (about a third) and files with a few things wrong."""
    header: dict = {}
    pos = 0
    for i in range(draw(st.integers(0, 4))):
        dtype = _sometimes(draw, draw(st.sampled_from(DTYPES)), st.sampled_from(["F4", "f32", ""]) | json_scalars)
        shape = _sometimes(draw, draw(st.lists(st.integers(0, 5), max_size=3)),
                           st.lists(st.integers(-3, 2**65), max_size=3) | json_values)
        size = ITEMSIZE.get(dtype, 1) if isinstance(dtype, str) else 1
        if isinstance(shape, list) and all(type(d) is int for d in shape):
            for d in shape:
                size *= max(d, 0)
        size = min(size, 2**20)
        offsets = _sometimes(
            draw,
            [pos, pos + size],
            st.sampled_from(
                [
                    [pos + 1, pos + size + 1],
                    [max(pos - 1, 0), pos + size],
                    [pos, pos + size + 1],
                    [pos, max(pos + size - 1, 0)],
                ]
            )
            | json_values,
        )
        entry = _sometimes(draw, {"dtype": dtype, "shape": shape, "data_offsets": offsets}, json_values)
        header[_sometimes(draw, f"t{i}", st.sampled_from(["t0", "", "__metadata__"]))] = entry
        if isinstance(offsets, list) and len(offsets) == 2 and all(type(v) is int for v in offsets):
            pos = max(pos, offsets[1])
    if draw(st.booleans()):
        header["__metadata__"] = _sometimes(
            draw, draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2)), json_values
        )
    blob = _sometimes(draw, json.dumps(header).encode() + b" " * draw(st.integers(0, 7)), st.binary(max_size=40))
    length = _sometimes(draw, len(blob), st.sampled_from([len(blob) + 1, max(len(blob) - 1, 0), 2**64 - 1]))
    data = draw(st.binary(min_size=min(pos, 512), max_size=min(pos, 512))) + b"\0" * max(0, pos - 512)
    data = _sometimes(draw, data, st.sampled_from([data[:-1], data + b"\0"]))
    return struct.pack("<Q", length) + blob + data


def _check_safetensors(raw: bytes) -> None:
    path = _file("fuzz.safetensors", raw)
    try:
        tensors, meta = read_header(path)
    except TurbopackError as e:
        _clean(str(e))
        return
    from safetensors import safe_open  # accepted by us: must load there too, every tensor

    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(tensors)
        for name, entry in tensors.items():
            t = f.get_tensor(name)
            assert t.dtype == entry.dtype and tuple(t.shape) == entry.shape
    assert all(isinstance(v, str) for v in meta.values())


@pytest.mark.parametrize("header", [
    {"a": {"dtype": "F32", "shape": {}, "data_offsets": [0, 4]}},  # a dict where a list belongs
    {"__metadata__": [], "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}},
    {"__metadata__": False},
    {"a": {"dtype": "F32", "shape": [2**65, 0], "data_offsets": [0, 0]}},  # not a usize
    {"a": {"dtype": "F32", "shape": [2**40, 2**40, 0], "data_offsets": [0, 0]}},  # overflows before the 0
    {"a": {"dtype": "F32", "shape": [2**63, 0], "data_offsets": [0, 0]}},  # not an int64
    {"a": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}},
], ids=["shape-dict", "meta-list", "meta-false", "dim-2^65", "dims-overflow", "dim-2^63", "dim-bool"])
def test_found_by_fuzzing(header):
    """Headers the fuzzer found that our reader accepted and the safetensors library (or torch)
    then refused: now ours refuses them first."""
    blob = json.dumps(header).encode()
    data = b"\0" * 4 if "a" in header and header["a"]["data_offsets"][1] else b""
    with pytest.raises(TurbopackError):
        read_header(
            _file(
                "found.safetensors",
                struct.pack("<Q", len(blob)) + blob + data[: header.get("a", {}).get("data_offsets", [0, 0])[1]],
            )
        )


@pytest.mark.parametrize("shape", [[0, 2**40, 2**40], [0], [], [3, 0]])
def test_zero_size_and_scalar_tensors_load(shape):
    blob = json.dumps({"a": {"dtype": "F32", "shape": shape, "data_offsets": [0, 4 if shape == [] else 0]}}).encode()
    _check_safetensors(struct.pack("<Q", len(blob)) + blob + (b"\0" * 4 if shape == [] else b""))


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_safetensors_any_bytes(raw):
    _check_safetensors(raw)


@FUZZ
@given(safetensors_files())
def test_fuzz_safetensors_structured(raw):
    _check_safetensors(raw)


@FUZZ
@given(st.data())
def test_fuzz_safetensors_real_file_mutated(data):
    """Flip, cut or insert bytes of a real (small) safetensors file."""
    import torch
    from safetensors.torch import save as st_save

    raw = bytearray(
        st_save({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)})
    )
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del raw[i:i + data.draw(st.integers(1, 8))]
        else:
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    _check_safetensors(bytes(raw))


# --- manifests -------------------------------------------------------------------------------------


@st.composite
def manifests(draw) -> bytes:
    m = {
        "manifest_version": draw(st.sampled_from([1, 0, 2, -1, "1", True, None, 1.0])),
        "kind": draw(st.sampled_from(["quantized", "packed", "exported"]) | json_scalars),
        "tensors": draw(st.dictionaries(st.text(max_size=6), json_values, max_size=3) | json_values),
        "shards": draw(
            st.dictionaries(
                st.text(max_size=6),
                st.fixed_dictionaries(
                    {"bytes": st.integers(-1, 10**6) | json_scalars, "sha256": st.text(max_size=4) | json_scalars}
                )
                | json_values,
                max_size=2,
            )
            | json_values
        ),
    }
    for key in list(m):
        if draw(st.integers(0, 7)) == 0:
            del m[key]
    return json.dumps(m).encode() if draw(st.integers(0, 9)) else draw(st.binary(max_size=60))


def _check_manifest(raw: bytes) -> None:
    folder = _DIR / "manifest"
    folder.mkdir(exist_ok=True)
    (folder / "turbopack.json").write_bytes(raw)
    try:
        m = read_manifest(folder)
    except TurbopackError as e:
        _clean(str(e))
        return
    assert isinstance(m["kind"], str) and isinstance(m["tensors"], dict)
    assert all(isinstance(s["bytes"], int) and isinstance(s["sha256"], str) for s in m["shards"].values())


@FUZZ
@given(manifests())
def test_fuzz_manifest(raw):
    _check_manifest(raw)


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_manifest_any_bytes(raw):
    _check_manifest(raw)


# --- config.json ------------------------------------------------------------------------------------

ARCHS = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "GPT2LMHeadModel"]
DIM_KEYS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window", "max_window_layers"]
dims = st.integers(1, 64) | st.integers(-5, 0) | json_scalars
rope = st.fixed_dictionaries(
    {},
    optional={
        "rope_type": st.sampled_from(["default", "linear", "dynamic", "llama3", "yarn"]) | json_scalars,
        "type": json_scalars,
        "factor": st.floats(0.5, 8) | json_scalars,
        "rope_theta": st.floats(1, 1e6) | json_scalars,
        "low_freq_factor": json_scalars,
        "original_max_position_embeddings": dims,
    },
)


@st.composite
def configs(draw) -> dict:
    cfg = {"architectures": draw(st.lists(st.sampled_from(ARCHS), max_size=2) | json_values)}
    for key in DIM_KEYS:
        if draw(st.integers(0, 5)):
            cfg[key] = draw(dims)
    for key, strat in (
        ("rope_parameters", rope | json_values),
        ("rope_scaling", rope | json_values),
        ("rope_theta", st.floats(1, 1e6) | json_scalars),
        ("rms_norm_eps", st.floats(0, 1) | json_scalars),
        ("hidden_act", st.sampled_from(["silu", "gelu"]) | json_scalars),
        ("tie_word_embeddings", json_scalars),
        ("attention_bias", json_scalars),
        ("use_sliding_window", json_scalars),
        ("mlp_bias", json_scalars),
    ):
        if draw(st.booleans()):
            cfg[key] = draw(strat)
    return cfg


@FUZZ
@given(configs())
def test_fuzz_config(cfg):
    from turbopack.inference.model import ModelConfig
    from turbopack.packer.families import check_dims, family_of

    for parse in (ModelConfig.from_hf_config, family_of,
                  lambda c: check_dims(c, {"model.layers.0.self_attn.q_proj.weight": (64, 64),
                                           "model.layers.3.mlp.down_proj.weight": (64, 96)})):
        try:
            parse(cfg)
        except TurbopackError as e:
            _clean(str(e))


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_config_file_any_bytes(raw):
    """config.json bytes through the reader the commands use, then parsing."""
    from turbopack.checkpoint import read_json
    from turbopack.inference.model import ModelConfig

    try:
        ModelConfig.from_hf_config(read_json(_file("config.json", raw)))
    except TurbopackError as e:
        _clean(str(e))


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000])
def test_deeply_nested_json_is_a_clean_error(raw):
    """json.loads raises RecursionError past ~1000 levels: caught for headers and JSON files."""
    from turbopack.checkpoint import read_json

    with pytest.raises(TurbopackError, match="not valid JSON"):
        read_header(_file("deep.safetensors", struct.pack("<Q", len(raw)) + raw))
    with pytest.raises(TurbopackError, match="not valid JSON"):
        read_json(_file("deep.json", raw))


@pytest.mark.parametrize(
    "changes",
    [
        {"num_attention_heads": 0},
        {"rope_parameters": {"rope_type": "linear", "factor": "two"}},
        {"rope_scaling": [1]},
        {"rms_norm_eps": "tiny"},
        {"head_dim": -16},
    ],
    ids=["zero-heads", "factor-str", "rope-list", "eps-str", "negative-dim"],
)
def test_config_values_found_by_fuzzing(changes):
    """Configs that raised ZeroDivisionError/TypeError/AttributeError from parsing before."""
    from turbopack.inference.model import ModelConfig
    from turbopack.packer.synthetic import llama_config

    cfg = {**llama_config(64, 96, 2, 4, 2, vocab=128), **changes}
    with pytest.raises(TurbopackError, match="config.json"):
        ModelConfig.from_hf_config(cfg)
