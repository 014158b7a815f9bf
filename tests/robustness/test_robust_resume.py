"""Crash safety and --resume, through the CLI: a resumed run that was interrupted keeps its partial
output (``.turbopack-partial-<OUT>``), a rerun skips the shards it finished (they are not computed
again) and ends byte-identical to an uninterrupted run; a corrupted shard is rewritten; changed
options are refused untouched; calibrated quantize refuses --resume before any work; without
--resume an interrupted run leaves nothing.

Shards are made small (ShardPlan.build patched) so the tiny model has several.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from robusthelp import quantized_w4, refused, run_cli, src, temp_leftovers, tree_hash  # noqa: F401

import turbopack.checkpoint.safetensors_stream as stream
import turbopack.packer.folder as foldermod
import turbopack.packer.pack as packmod
import turbopack.packer.rtn as quantmod
from turbopack.checkpoint import ShardPlan, read_header
from turbopack.checkpoint.resume import JOURNAL_NAME, PARTIAL_PREFIX

SHARD_BYTES = 12_000
W4 = ["-f", "w4a16", "-g", "32"]


def _small_shards(monkeypatch) -> None:
    real = ShardPlan.build.__func__
    monkeypatch.setattr(
        ShardPlan, "build", classmethod(lambda cls, jobs, max_shard_bytes=0: real(cls, jobs, SHARD_BYTES))
    )


@pytest.fixture(autouse=True)
def small_shards(monkeypatch):
    _small_shards(monkeypatch)


def _unpatch(monkeypatch) -> None:
    """Undo the interruption (and anything else) but keep the small shards."""
    monkeypatch.undo()
    _small_shards(monkeypatch)


def _partial(out: Path) -> Path:
    return out.parent / f"{PARTIAL_PREFIX}{out.name}"


def _calls(monkeypatch, module, name: str, interrupt_at: int | None = None, key=lambda a, k: None) -> list:
    """Record ``module.name``'s calls (``key`` of its args and kwargs); raise KeyboardInterrupt
    (Ctrl-C there) on call ``interrupt_at``."""
    real, seen = getattr(module, name), []

    def wrapped(*a, **k):
        if len(seen) + 1 == interrupt_at:
            raise KeyboardInterrupt
        seen.append(key(a, k))
        return real(*a, **k)

    monkeypatch.setattr(module, name, wrapped)
    return seen


def _finished(partial: Path) -> dict[str, set[str]]:
    """{shard path relative to the partial folder: its tensor names}, for every journaled shard."""
    journal = json.loads((partial / JOURNAL_NAME).read_text())
    for rel, entry in journal["shards"].items():
        assert set(entry) == {"fingerprint", "bytes", "sha256"} and entry["bytes"] == (partial / rel).stat().st_size
    return {rel: set(read_header(partial / rel)[0]) for rel in journal["shards"]}


def _kept_line(out: Path) -> str:
    return f"partial output kept in {_partial(out).resolve()}; rerun with --resume to continue it"


# --- quantize --------------------------------------------------------------------------------------


@pytest.fixture
def fresh_w4(capsys, src, tmp_path) -> Path:
    out = tmp_path / "fresh"
    rc, _, err = run_cli(capsys, "quantize", src, "-o", out, *W4)
    assert rc == 0, err
    assert len([p for p in out.glob("model-*.safetensors")]) >= 4, "the shards are not small enough to test resume"
    return out


def _interrupt_quantize(capsys, monkeypatch, src: Path, out: Path, fresh: Path, at: int = 9) -> dict[str, set[str]]:
    """Ctrl-C a resumed quantize at its ``at``-th weight; returns the journaled shards' tensors."""
    calls = _calls(monkeypatch, quantmod, "quantize_tensor", interrupt_at=at)
    rc, _, err = run_cli(capsys, "quantize", src, "-o", out, *W4, "--resume")
    _unpatch(monkeypatch)
    assert rc == 130 and len(calls) == at - 1, err
    assert err.strip().splitlines()[-1] == f"interrupted; {_kept_line(out)}"
    assert not out.exists() and temp_leftovers(out.parent) == []
    finished = _finished(_partial(out))
    assert 1 <= len(finished) < len(list(fresh.glob("model-*.safetensors")))
    return finished


def _modules(tensors: set[str]) -> set[str]:
    return {t.rsplit(".", 1)[0] + ".weight" for t in tensors if t.endswith(".qweight")}


def test_quantize_interrupted_then_resumed_is_identical(capsys, src, fresh_w4, tmp_path, monkeypatch):
    out = tmp_path / "out"
    finished = _interrupt_quantize(capsys, monkeypatch, src, out, fresh_w4)
    done = _modules(set().union(*finished.values()))
    calls = _calls(monkeypatch, quantmod, "quantize_tensor", key=lambda a, k: a[1])
    rc, _, err = run_cli(capsys, "quantize", src, "-o", out, *W4, "--resume")
    assert rc == 0, err
    assert done and not done & set(calls), "tensors of finished shards were quantized again"
    quantized = {m + ".weight" for m in json.loads((fresh_w4 / "turbopack.json").read_text())["tensors"]}
    assert set(calls) | done == quantized and len(calls) == len(quantized) - len(done)
    assert tree_hash(out) == tree_hash(fresh_w4)  # shards, index, manifest, config: byte for byte
    assert not _partial(out).exists() and not (out / JOURNAL_NAME).exists()
    assert run_cli(capsys, "verify", out)[0] == 0


def test_quantize_fp8_per_tensor_in_row_chunks_resumed_is_identical(capsys, src, tmp_path, monkeypatch):
    """A tensor-wide scale is rewritten by every row chunk of its job: resuming still works."""
    monkeypatch.setattr(foldermod, "CHUNK_BYTES", 2048)  # several row chunks per weight
    fp8 = ["-f", "fp8", "--per-tensor"]
    fresh, out = tmp_path / "fresh", tmp_path / "out"
    assert run_cli(capsys, "quantize", src, "-o", fresh, *fp8)[0] == 0
    _calls(monkeypatch, quantmod, "quantize_tensor", interrupt_at=9)
    assert run_cli(capsys, "quantize", src, "-o", out, *fp8, "--resume")[0] == 130
    assert _finished(_partial(out))
    _unpatch(monkeypatch)
    monkeypatch.setattr(foldermod, "CHUNK_BYTES", 2048)
    rc, _, err = run_cli(capsys, "quantize", src, "-o", out, *fp8, "--resume")
    assert rc == 0 and tree_hash(out) == tree_hash(fresh), err


def test_quantize_corrupted_partial_shard_is_rewritten(capsys, src, fresh_w4, tmp_path, monkeypatch):
    out = tmp_path / "out"
    finished = _interrupt_quantize(capsys, monkeypatch, src, out, fresh_w4)
    first = sorted(finished)[0]
    shard = _partial(out) / first
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit, in the data: the header still parses
    shard.write_bytes(bytes(raw))
    calls = _calls(monkeypatch, quantmod, "quantize_tensor", key=lambda a, k: a[1])
    rc, _, err = run_cli(capsys, "quantize", src, "-o", out, *W4, "--resume")
    assert rc == 0, err
    assert _modules(finished[first]) <= set(calls), "the corrupted shard was not rewritten"
    rest = _modules(set().union(*(v for k, v in finished.items() if k != first)))
    assert not rest & set(calls)
    assert tree_hash(out) == tree_hash(fresh_w4)


def test_quantize_changed_options_are_refused(capsys, src, fresh_w4, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _interrupt_quantize(capsys, monkeypatch, src, out, fresh_w4)
    _unpatch(monkeypatch)
    before = tree_hash(_partial(out))
    refused(capsys, ["quantize", src, "-o", out, "-f", "w8a16", "--resume"], src, out,
            f"{_partial(out).resolve()}: partial output of another run (different format)",
            "delete that folder to start over, or drop --resume")
    assert tree_hash(_partial(out)) == before


def test_disk_full_with_resume_keeps_the_partial_output(capsys, src, fresh_w4, tmp_path, monkeypatch):
    """Not only Ctrl-C: an OS error keeps it too, one line says so, and the rerun finishes it."""
    budget = [40_000]
    real_open = open

    class FillsUp:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            budget[0] -= len(data)
            if budget[0] < 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

    monkeypatch.setattr(stream, "open", lambda p, mode="r", *a, **k: FillsUp(real_open(p, mode, *a, **k))
                        if "w" in mode else real_open(p, mode, *a, **k), raising=False)
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "quantize", src, "-o", out, *W4, "--resume")
    last = err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith(f"error: no space left on device writing {out}/model-"), err
    assert last.endswith(f"free space or choose another -o; {_kept_line(out)}")
    assert _finished(_partial(out)) and not out.exists()
    _unpatch(monkeypatch)
    rc, _, err = run_cli(capsys, "quantize", src, "-o", out, *W4, "--resume")
    assert rc == 0 and tree_hash(out) == tree_hash(fresh_w4), err


def test_without_resume_an_interrupted_run_leaves_nothing(capsys, src, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _calls(monkeypatch, quantmod, "quantize_tensor", interrupt_at=9)
    rc, _, err = run_cli(capsys, "quantize", src, "-o", out, *W4)
    assert rc == 130 and err.strip().splitlines()[-1] == "interrupted; no output was left behind"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("calibration", [["--method", "gptq"], ["--method", "awq"], ["-f", "w8a8", "--smooth"]])
def test_resume_with_calibration_fails_fast(capsys, src, tmp_path, monkeypatch, calibration):
    import turbopack.packer.calibration as calib

    monkeypatch.setattr(calib, "quantize_calibrated", lambda *a, **k: pytest.fail("calibration started"))
    out = tmp_path / "out"
    refused(capsys, ["quantize", src, "-o", out, *calibration, "--resume"], src, out,
            "--resume works with RTN only", "drop --resume")
    assert not _partial(out).exists()


# --- pack ------------------------------------------------------------------------------------------


PACK = ["--arch", "sm80", "--arch", "sm90"]  # two output folders, whose shards end at different jobs


def test_pack_interrupted_then_resumed_is_identical(capsys, quantized_w4, tmp_path, monkeypatch):
    fresh, out = tmp_path / "fresh", tmp_path / "out"
    rc, _, err = run_cli(capsys, "pack", quantized_w4, *PACK, "-o", fresh)
    assert rc == 0, err
    _calls(monkeypatch, packmod, "_write_job", interrupt_at=10)
    rc, _, err = run_cli(capsys, "pack", quantized_w4, *PACK, "-o", out, "--resume")
    assert rc == 130 and err.strip().splitlines()[-1] == f"interrupted; {_kept_line(out)}", err
    finished = _finished(_partial(out))
    assert {rel.split("/")[0] for rel in finished} == {"sm80", "sm90"}
    done = {(rel.split("/")[0], t.rsplit(".", 1)[0]) for rel, names in finished.items() for t in names}
    _unpatch(monkeypatch)
    packed = _calls(monkeypatch, packmod, "pack_module", key=lambda a, k: (a[3], k["name"]))
    rc, _, err = run_cli(capsys, "pack", quantized_w4, *PACK, "-o", out, "--resume")
    assert rc == 0, err
    assert packed and not done & set(packed), "modules of finished shards were packed again"
    assert tree_hash(out) == tree_hash(fresh)
    assert not _partial(out).exists() and temp_leftovers(tmp_path) == []
    for arch in ("sm80", "sm90"):
        assert run_cli(capsys, "verify", out / arch)[0] == 0


def test_pack_changed_arch_is_refused(capsys, quantized_w4, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _calls(monkeypatch, packmod, "_write_job", interrupt_at=10)
    assert run_cli(capsys, "pack", quantized_w4, *PACK, "-o", out, "--resume")[0] == 130
    _unpatch(monkeypatch)
    refused(capsys, ["pack", quantized_w4, "--arch", "sm90", "-o", out, "--resume"], quantized_w4, out,
            "partial output of another run (different archs)", "drop --resume")
