"""Bad targets for `turbopack pack`: an unknown arch, a format an arch cannot run natively (packed
upcast with a note, refused with --strict), a TP degree whose rank slices split a quantization
group or a head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from robusthelp import quantized_w4, refused, run_cli  # noqa: F401  (quantized_w4: a fixture)


@pytest.fixture(scope="module")
def quantized_fp8(tiny_llama, tmp_path_factory) -> Path:
    from turbopack.packer.quantize import quantize

    out = tmp_path_factory.mktemp("robust") / "q-fp8"
    quantize(tiny_llama, out, "fp8", progress=False)
    return out


def test_unknown_arch_lists_the_known(capsys, quantized_w4, tmp_path):
    refused(capsys, ["pack", quantized_w4, "--arch", "sm99", "-o", tmp_path / "out"], quantized_w4, tmp_path / "out",
            "unknown arch 'sm99'", "registered: sm100, sm120, sm75, sm80, sm86, sm89, sm90")


def test_fp8_on_sm80_says_it_upcasts(capsys, quantized_fp8, tmp_path):
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, "pack", quantized_fp8, "--arch", "sm80", "-o", out)
    assert rc == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1, err
    assert "fp8(per_tensor=False) on sm80 (A100, A30): no native fp8 tensor cores" in notes[0]
    assert "upcast to 16-bit" in notes[0] and "fp8_t16x64_upcast" in notes[0] and "native on sm89, sm90" in notes[0]
    layouts = {i["layout"] for i in json.loads((out / "turbopack.json").read_text())["tensors"].values()}
    assert layouts == {"fp8_t16x64_upcast"}


def test_fp8_on_sm90_has_no_note(capsys, quantized_fp8, tmp_path):
    rc, _, err = run_cli(capsys, "pack", quantized_fp8, "--arch", "sm90", "--strict", "-o", tmp_path / "out")
    assert rc == 0 and "note:" not in err, err


def test_fp8_on_sm80_refused_with_strict(capsys, quantized_fp8, tmp_path):
    refused(capsys, ["pack", quantized_fp8, "--arch", "sm90", "--arch", "sm80", "--strict", "-o", tmp_path / "out"],
            quantized_fp8, tmp_path / "out",
            "--strict: fp8(per_tensor=False) on sm80 (A100, A30)", "upcast", "pack for a native arch or drop --strict")


def test_fp8_json_carries_the_note(capsys, quantized_fp8, tmp_path):
    rc, stdout, err = run_cli(capsys, "pack", quantized_fp8, "--arch", "sm86", "-o", tmp_path / "out", "--json")
    assert rc == 0, err
    assert "upcast" in json.loads(stdout)["notes"][0]


def test_fp8_on_sm75_refused_with_the_fix(capsys, quantized_fp8, tmp_path):
    refused(capsys, ["pack", quantized_fp8, "--arch", "sm75", "-o", tmp_path / "out"], quantized_fp8, tmp_path / "out",
            "cannot run on sm75", "use w8a16")


def test_group_does_not_divide_a_tp_slice(capsys, tmp_path):
    """intermediate 192, group 64: down_proj's K splits into slices of 96 at tp=2; group 32 would fit."""
    from tinymodels import make_tiny_model

    from turbopack.packer.quantize import quantize

    model = make_tiny_model(tmp_path / "m", intermediate_size=192)
    quantize(model, tmp_path / "q", "w4a16", group_size=64, progress=False)
    capsys.readouterr()
    refused(
        capsys,
        ["pack", tmp_path / "q", "--arch", "sm90", "--tp", "2", "-o", tmp_path / "out"],
        tmp_path / "q",
        tmp_path / "out",
        "model.layers.0.mlp.down_proj: tp=2 splits K=192 into slices of 96, which group size 64 does not divide",
        "group sizes that would work: [32] (re-quantize with --group-size)",
    )


def test_group_fits_no_tp_slice(capsys, quantized_w4, tmp_path):
    """intermediate 96, group 32, tp=2: slices of 48; no group size fits, so another --tp."""
    refused(capsys, ["pack", quantized_w4, "--arch", "sm90", "--tp", "2", "-o", tmp_path / "out"], quantized_w4,
            tmp_path / "out", "down_proj: tp=2 splits K=96 into slices of 48", "choose another --tp")


def test_tp_splitting_heads(capsys, quantized_w4, tmp_path):
    refused(
        capsys,
        ["pack", quantized_w4, "--arch", "sm90", "--tp", "3", "-o", tmp_path / "out"],
        quantized_w4,
        tmp_path / "out",
        "k_proj: num_key_value_heads=2 does not split into tp=3 whole heads",
        "choose --tp among [1, 2]",
    )


def test_tp_zero(capsys, quantized_w4, tmp_path):
    refused(capsys, ["pack", quantized_w4, "--arch", "sm90", "--tp", "0", "-o", tmp_path / "out"], quantized_w4,
            tmp_path / "out", "--tp 0: must be at least 1")
