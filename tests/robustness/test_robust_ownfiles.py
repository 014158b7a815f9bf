"""Our own files gone wrong: a manifest missing, corrupt or from a newer turbopack, a shard whose
bytes changed (verify: exit 1 naming the shard), a layout name this turbopack does not know, and a
folder packed for another GPU arch than the one it is loaded on (the loader names the repack
command, and --repack does it at load)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from robusthelp import copy_model, packed_sm90, quantized_w4, refused, run_cli, tree_hash  # noqa: F401

from turbopack.errors import CheckpointError


def _edit_manifest(folder: Path, fn) -> None:
    path = folder / "turbopack.json"
    manifest = json.loads(path.read_text())
    fn(manifest)
    path.write_text(json.dumps(manifest))


@pytest.fixture
def qcopy(quantized_w4, tmp_path) -> Path:
    return copy_model(quantized_w4, tmp_path / "q")


@pytest.fixture
def pcopy(packed_sm90, tmp_path) -> Path:
    return copy_model(packed_sm90, tmp_path / "p")


def test_manifest_missing_pack(capsys, qcopy, tmp_path):
    (qcopy / "turbopack.json").unlink()
    refused(capsys, ["pack", qcopy, "--arch", "sm90", "-o", tmp_path / "out"], qcopy, tmp_path / "out",
            "not a quantized folder (no turbopack.json)", "run `turbopack quantize` first")


def test_manifest_missing_verify(capsys, pcopy):
    (pcopy / "turbopack.json").unlink()
    refused(capsys, ["verify", pcopy], pcopy, None, "no turbopack.json here or in its arch/rank subfolders",
            "point at a `turbopack pack` output")


@pytest.mark.parametrize("cmd", ["pack", "verify", "inspect"])
def test_manifest_from_a_newer_version(capsys, qcopy, tmp_path, cmd):
    _edit_manifest(qcopy, lambda m: m.update(manifest_version=99))
    argv = {"pack": ["pack", qcopy, "--arch", "sm90", "-o", tmp_path / "out"], "verify": ["verify", qcopy],
            "inspect": ["inspect", qcopy]}[cmd]
    refused(
        capsys,
        argv,
        qcopy,
        tmp_path / "out",
        "turbopack.json: manifest version 99 is newer than this turbopack understands (1)",
        "upgrade turbopack",
    )


def test_manifest_not_json(capsys, qcopy, tmp_path):
    (qcopy / "turbopack.json").write_text('{"manifest_version": 1, "kind": ')
    refused(capsys, ["pack", qcopy, "--arch", "sm90", "-o", tmp_path / "out"], qcopy, tmp_path / "out",
            "turbopack.json: not valid JSON", "fix or re-download it")


def test_manifest_corrupt_entry(capsys, pcopy):
    _edit_manifest(pcopy, lambda m: m["shards"].update({"model.safetensors": {"bytes": "many"}}))
    refused(
        capsys,
        ["verify", pcopy],
        pcopy,
        None,
        "turbopack.json: shards['model.safetensors'] needs bytes and sha256",
        "the manifest is corrupt",
    )


def _flip_a_data_byte(shard: Path) -> None:
    raw = bytearray(shard.read_bytes())
    raw[-100] ^= 0xFF  # in the data section: headers still parse, only the bytes differ
    shard.write_bytes(bytes(raw))


def test_checksum_mismatch_exit_1_names_the_shard(capsys, pcopy):
    _flip_a_data_byte(pcopy / "model.safetensors")
    before = tree_hash(pcopy)
    rc, stdout, err = run_cli(capsys, "verify", pcopy)
    assert rc == 1, err
    assert stdout.startswith("FAIL ") and stdout.count("\n") == 1
    assert f"{pcopy / 'model.safetensors'}: sha256" in stdout and "does not match the manifest's" in stdout
    assert "the shard changed after packing, re-pack" in stdout
    assert tree_hash(pcopy) == before


def test_checksum_mismatch_json(capsys, pcopy):
    _flip_a_data_byte(pcopy / "model.safetensors")
    rc, stdout, _ = run_cli(capsys, "verify", pcopy, "--json")
    report = json.loads(stdout)
    assert rc == 1 and report["ok"] is False and "model.safetensors" in report["folders"][0]["problems"][0]


def test_shard_truncated_exit_1(capsys, pcopy):
    shard = pcopy / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    rc, stdout, _ = run_cli(capsys, "verify", pcopy)
    assert rc == 1 and "model.safetensors" in stdout and "truncated or changed, re-pack" in stdout


def test_quantized_checksum_mismatch(capsys, qcopy):
    """verify checks a quantized folder's shards the same way."""
    _flip_a_data_byte(qcopy / "model.safetensors")
    rc, stdout, _ = run_cli(capsys, "verify", qcopy)
    assert rc == 1 and "model.safetensors: sha256" in stdout


def _unknown_layout(folder: Path) -> str:
    module = "model.layers.0.self_attn.q_proj"
    _edit_manifest(folder, lambda m: m["tensors"][module].update(layout="w4_t128x128"))
    return module


def test_layout_name_unknown_verify(capsys, pcopy):
    module = _unknown_layout(pcopy)
    refused(capsys, ["verify", pcopy], pcopy, None, f"turbopack.json: {module}: unknown layout 'w4_t128x128'",
            "registered: fp8_rowmajor", "packed by another turbopack", "re-pack")


def test_layout_name_unknown_load(pcopy):
    from turbopack.inference.loader import load

    module = _unknown_layout(pcopy)
    with pytest.raises(
        CheckpointError, match=f"turbopack.json: {module}: unknown layout 'w4_t128x128'; registered: .*re-pack"
    ):
        load(pcopy, device="cpu")


# --- packed for another arch than the local GPU ---------------------------------------------------


@pytest.fixture
def gpu_sm80(monkeypatch):
    """Pretend the local device is an A100 (sm80): the loader's planning is what decides."""
    import turbopack.inference.loader as loader

    monkeypatch.setattr(loader, "resolve_device", lambda device="auto": torch.device("cuda", 0))
    monkeypatch.setattr(loader, "local_arch", lambda device: "sm80")
    return torch.device("cuda", 0)


def test_packed_for_another_arch_offers_the_repack_command(packed_sm90, quantized_w4, gpu_sm80):
    from turbopack.checkpoint import read_manifest
    from turbopack.inference.loader import plan_modules

    with pytest.raises(CheckpointError) as err:
        plan_modules(packed_sm90, read_manifest(packed_sm90), gpu_sm80, repack=False, arch=None, backend=None)
    msg = str(err.value)
    assert err.value.exit_code == 2 and "\n" not in msg
    assert "packed for sm90 but this GPU is sm80" in msg
    assert f"turbopack pack {quantized_w4} --arch sm80 -o p-sm90-sm80" in msg and "--repack" in msg


def test_packed_for_another_arch_repack_at_load(packed_sm90, quantized_w4, gpu_sm80):
    """--repack: the arch-neutral source is planned for the local arch instead."""
    from turbopack.checkpoint import read_manifest
    from turbopack.inference.loader import plan_modules

    folder, kind, plans, arch = plan_modules(
        packed_sm90, read_manifest(packed_sm90), gpu_sm80, repack=True, arch=None, backend=None
    )
    assert folder == quantized_w4 and kind == "quantized" and arch == "sm80"
    assert {p.pack_for for p in plans.values()} == {"sm80"}
    assert {p.layout.name.value for p in plans.values()} == {"w4_t16x64"}


def test_packed_for_another_arch_repack_without_source(pcopy, gpu_sm80):
    from turbopack.checkpoint import read_manifest
    from turbopack.inference.loader import plan_modules

    _edit_manifest(pcopy, lambda m: m.update(source=str(pcopy.parent / "gone")))
    with pytest.raises(CheckpointError, match="--repack needs the arch-neutral source .*gone, which is not there"):
        plan_modules(pcopy, read_manifest(pcopy), gpu_sm80, repack=True, arch=None, backend=None)


def test_packed_for_another_arch_cli_run(capsys, pcopy, gpu_sm80):
    refused(capsys, ["run", pcopy, "--prompt", "hello", "-n", "1"], pcopy, None,
            "packed for sm90 but this GPU is sm80", "--arch sm80", "--repack")
