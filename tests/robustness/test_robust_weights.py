"""Weights that are a problem, and weights that only look like one: NaN/Inf (refused), all-zero
groups (fine: exact zeros), K that the group size does not divide (refused, naming sizes that
work), tied embeddings (fine either way), pickle checkpoints (refused, never unpickled)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from robusthelp import (  # noqa: F401
    load_state,
    refused,
    run_cli,
    save_state,
    split_safetensors,
    src,
    tensors_by_offset,
    tree_hash,
    write_safetensors_raw,
)


def _set(src: Path, name: str, fn) -> None:
    state = load_state(src / "model.safetensors")
    fn(state[name])
    save_state(src / "model.safetensors", state)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_weight(capsys, src, tmp_path, value):
    def poison(t):
        t[3, 5] = value
        t[7, 1] = value

    _set(src, "model.layers.1.mlp.up_proj.weight", poison)
    refused(capsys, ["quantize", src, "-o", tmp_path / "out", "-f", "w8a16"], src, tmp_path / "out",
            "model.safetensors:model.layers.1.mlp.up_proj.weight: 2 NaN/Inf value(s)",
            "fix or re-export the source checkpoint", "--ignore")


def test_non_finite_weight_ignored_is_fine(capsys, src, tmp_path):
    """The fix the message offers works: --ignore keeps that tensor as is."""
    _set(src, "model.layers.1.mlp.up_proj.weight", lambda t: t.__setitem__((0, 0), float("nan")))
    rc, _, err = run_cli(
        capsys, "quantize", src, "-o", tmp_path / "out", "-f", "w8a16", "--ignore", "model.layers.1.mlp.up_proj"
    )
    assert rc == 0, err


@pytest.mark.parametrize("fmt,extra", [("w4a16", ["-g", "32"]), ("w4a16", ["-g", "32", "--sym"]), ("w8a16", []),
                                       ("w8a8", []), ("fp8", []), ("fp8", ["--per-tensor"])],
                         ids=["w4-asym", "w4-sym", "w8a16", "w8a8", "fp8", "fp8-tensor"])
def test_all_zero_groups_are_exact_zeros(capsys, src, tmp_path, fmt, extra):
    """Zero groups, zero rows and a whole zero tensor are not an error: they dequantize to exact
    zeros with finite scales (no 0/0)."""
    from turbopack.checkpoint.quantized import QuantizedCheckpoint

    def zero_parts(t):
        t[0, :32] = 0  # one group
        t[5] = 0  # one row (every group of it)

    _set(src, "model.layers.0.self_attn.q_proj.weight", zero_parts)
    _set(src, "model.layers.1.self_attn.v_proj.weight", lambda t: t.zero_())  # per-tensor scale of 0
    rc, _, err = run_cli(capsys, "quantize", src, "-o", tmp_path / "out", "-f", fmt, *extra)
    assert rc == 0, err
    qc = QuantizedCheckpoint(tmp_path / "out")
    q = qc.module("model.layers.0.self_attn.q_proj").dequantize()
    assert torch.equal(q[0, :32].float(), torch.zeros(32)) and torch.equal(q[5].float(), torch.zeros(64))
    assert bool(torch.isfinite(q.float()).all()) and q[1].abs().sum() > 0  # the rest still quantized
    v = qc.module("model.layers.1.self_attn.v_proj")
    assert torch.equal(v.dequantize().float(), torch.zeros(32, 64))
    assert all(bool(torch.isfinite(t.float()).all()) for t in v.tensors.values() if t.is_floating_point())


def test_group_size_does_not_divide_k(capsys, src, tmp_path):
    refused(capsys, ["quantize", src, "-o", tmp_path / "out", "-f", "w4a16", "-g", "64"], src, tmp_path / "out",
            "model.safetensors:model.layers.0.mlp.down_proj.weight: K=96 is not a multiple of group size 64",
            "group sizes that divide it: [32]")


def test_no_group_size_divides_k(capsys, tmp_path):
    """K=80: no int4 group size (32, 64, 128) divides it; the fix is to keep it unquantized."""
    from tinymodels import make_tiny_model

    model = make_tiny_model(tmp_path / "k80", intermediate_size=80)
    capsys.readouterr()
    refused(
        capsys,
        ["quantize", model, "-o", tmp_path / "out", "-f", "w4a16", "-g", "32"],
        model,
        tmp_path / "out",
        "model.layers.0.mlp.down_proj.weight: K=80 is not a multiple of group size 32",
        "no int4 group size divides it",
        "--k-fallback w8",
        "--ignore",
    )


def test_tile_does_not_divide_is_padded(capsys, tmp_path, tiny_llama):
    """A tile that does not divide N or K is not an error: the layout pads (recorded per tensor)."""
    q = tmp_path / "q"
    assert run_cli(capsys, "quantize", tiny_llama, "-o", q, "-f", "w4a16", "-g", "32")[0] == 0
    rc, _, err = run_cli(capsys, "pack", q, "--arch", "sm90", "-o", tmp_path / "p")
    assert rc == 0, err
    manifest = json.loads((tmp_path / "p" / "turbopack.json").read_text())
    pad = manifest["tensors"]["model.layers.0.mlp.down_proj"]["padding"]
    assert (pad["k"], pad["k_pad"]) == (96, 128)


def test_tied_embeddings_without_lm_head(capsys, tmp_path):
    """tie_word_embeddings and no lm_head.weight (what HF saves): quantized, loaded with the tie."""
    from tinymodels import make_tiny_model

    from turbopack.inference.loader import load

    model = make_tiny_model(tmp_path / "tied", tie_word_embeddings=True)
    capsys.readouterr()
    assert "lm_head.weight" not in split_safetensors(model / "model.safetensors")[0]
    rc, _, err = run_cli(capsys, "quantize", model, "-o", tmp_path / "q", "-f", "w8a16")
    assert rc == 0, err
    assert "lm_head.weight" not in split_safetensors(tmp_path / "q" / "model.safetensors")[0]
    m = load(tmp_path / "q", device="cpu")
    assert m.model.lm_head.weight is m.model.model.embed_tokens.weight


def test_tied_config_with_lm_head_present_kept_as_is(capsys, src, tmp_path):
    """A tied config that still ships lm_head.weight: the tensor is kept, byte for byte."""
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    rc, _, err = run_cli(capsys, "quantize", src, "-o", tmp_path / "q", "-f", "w8a16")
    assert rc == 0, err
    assert torch.equal(load_state(tmp_path / "q" / "model.safetensors")["lm_head.weight"],
                       load_state(src / "model.safetensors")["lm_head.weight"])
    assert "lm_head" in json.loads((tmp_path / "q" / "turbopack.json").read_text())["unquantized"]["lm_head.weight"]


def test_aliased_tensors_refused(capsys, src, tmp_path):
    """safetensors cannot alias: two names over the same bytes are overlapping offsets, refused."""
    path = src / "model.safetensors"
    header, data = split_safetensors(path)
    assert tensors_by_offset(header)[:2] == ["lm_head.weight", "model.embed_tokens.weight"]
    header["lm_head.weight"]["data_offsets"] = header["model.embed_tokens.weight"]["data_offsets"]
    write_safetensors_raw(path, header, data)
    refused(capsys, ["quantize", src, "-o", tmp_path / "out", "-f", "w8a16"], src, tmp_path / "out",
            "model.safetensors", "overlap")


# --- pickle checkpoints ---------------------------------------------------------------------------


class _Trap:
    """Unpickling this creates ``path`` (what a malicious checkpoint could do, harmlessly)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pickle_model(tmp_path: Path, tiny_llama: Path, filename: str) -> tuple[Path, Path]:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_bytes((tiny_llama / "config.json").read_bytes())
    marker = tmp_path / "UNPICKLED"
    (folder / filename).write_bytes(pickle.dumps({"model.embed_tokens.weight": _Trap(marker)}))
    return folder, marker


def test_trap_works_when_unpickled(tmp_path):
    """Control: the trap file really creates its marker when unpickled."""
    marker = tmp_path / "m"
    pickle.loads(pickle.dumps(_Trap(marker))).close()
    assert marker.exists()


@pytest.mark.parametrize("filename", ["pytorch_model.bin", "model.pt", "weights.pth", "model.ckpt"])
def test_pickle_checkpoint_refused_never_unpickled(capsys, tmp_path, tiny_llama, filename):
    folder, marker = _pickle_model(tmp_path, tiny_llama, filename)
    refused(capsys, ["quantize", folder, "-o", tmp_path / "out"], folder, tmp_path / "out",
            f"only pickle weights ({filename})", "never unpickles", "safe_serialization=True")
    assert not marker.exists()


def test_pickle_file_given_directly_refused(capsys, tmp_path, tiny_llama):
    folder, marker = _pickle_model(tmp_path, tiny_llama, "pytorch_model.bin")
    refused(capsys, ["quantize", folder / "pytorch_model.bin", "-o", tmp_path / "out"], folder, tmp_path / "out",
            "pytorch_model.bin", "never unpickles", "safe_serialization=True")
    assert not marker.exists()


@pytest.mark.parametrize("cmd", ["quantize", "pack", "inspect"])
def test_pickle_beside_safetensors_is_ignored(capsys, src, tmp_path, cmd):
    """A leftover .bin next to the safetensors weights is never opened."""
    marker = tmp_path / "UNPICKLED"
    (src / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))
    before = tree_hash(src)
    argv = {"quantize": ["quantize", src, "-o", tmp_path / "q", "-f", "w8a16"],
            "pack": ["pack", src, "--format", "w8a16", "--arch", "sm90", "-o", tmp_path / "p"],
            "inspect": ["inspect", src]}[cmd]
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 0, err
    assert not marker.exists() and tree_hash(src) == before
