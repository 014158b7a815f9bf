"""The resume journal (turbopack.checkpoint.resume) under ShardedWriter and atomic_output: finished
shards are skipped only when their fingerprint and sha256 match, anything else is rewritten, a
journal of another job is refused untouched, and a resumed output equals a fresh one byte for byte.
The end-to-end cases through the CLI are in tests/robustness/test_robust_resume.py."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from turbopack.checkpoint import ShardedWriter, ShardPlan, TensorEntry, atomic_output
from turbopack.checkpoint.resume import JOURNAL_NAME, Journal, partial_dir
from turbopack.errors import CheckpointError, ResumeRefusedError

JOB = {"command": "test", "source": {"files": {"a": [1, 2]}}, "format": {"bits": 4}}
N = 6  # tensors of 1 KiB, two per shard: three shards


class Crash(Exception):
    pass


def _plan(shape=(256,)) -> ShardPlan:
    return ShardPlan.build([[TensorEntry(f"w{i}", torch.float32, shape)] for i in range(N)], max_shard_bytes=2048)


def _value(i: int) -> torch.Tensor:
    return torch.full((256,), float(i))


def _write(
    folder: Path, journal: Journal | None, crash_at: int | None = None, plan: ShardPlan | None = None
) -> list[int]:
    """Write w0..w5 (skipping finished shards); raise Crash before tensor ``crash_at``. Returns the
    indices actually written."""
    writer = ShardedWriter(folder, plan or _plan(), {"format": "test"}, journal)
    written = []
    for i in range(N):
        if writer.skips(f"w{i}"):
            continue
        if i == crash_at:
            raise Crash
        writer.write(f"w{i}", _value(i).reshape(writer.plan.entries[0][0].shape))
        writer.close_if_complete()  # as the packer does between jobs
        written.append(i)
    writer.finish()
    return written


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def fresh(tmp_path) -> dict[str, str]:
    """The files of an uninterrupted write, without a journal."""
    folder = tmp_path / "fresh"
    folder.mkdir()
    _write(folder, None)
    return _tree(folder)


def _crashed(tmp_path, crash_at: int | None = 4) -> Path:
    """A journaled partial folder whose run crashed before w{crash_at} (4: shards 1 and 2 are
    finished), or (None) finished every shard but never got to the rename."""
    folder = tmp_path / "partial"
    folder.mkdir()
    if crash_at is None:
        _write(folder, Journal.open(folder, JOB))
        return folder
    with pytest.raises(Crash):
        _write(folder, Journal.open(folder, JOB), crash_at)
    return folder


def test_finished_shards_are_journaled_and_skipped(tmp_path, fresh):
    folder = _crashed(tmp_path)
    journal = json.loads((folder / JOURNAL_NAME).read_text())
    plan = _plan()
    assert sorted(journal["shards"]) == plan.files[:2] and journal["job"] == JOB
    for name, entry in journal["shards"].items():
        assert entry["bytes"] == (folder / name).stat().st_size
        assert entry["sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert len(entry["fingerprint"]) == 64
    assert _write(folder, Journal.open(folder, JOB)) == [4, 5]
    tree = _tree(folder)
    assert tree.pop(JOURNAL_NAME) and tree == fresh  # atomic_output drops the journal at the end


def test_a_flipped_byte_is_rewritten(tmp_path, fresh):
    folder = _crashed(tmp_path)
    shard = folder / _plan().files[1]
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    assert _write(folder, Journal.open(folder, JOB)) == [2, 3, 4, 5]
    tree = _tree(folder)
    tree.pop(JOURNAL_NAME)
    assert tree == fresh


def test_a_shard_planned_differently_is_rewritten(tmp_path):
    """Same job, but the shard would now hold other tensors: its fingerprint differs."""
    folder = _crashed(tmp_path)
    plan = _plan(shape=(16, 16))  # same bytes, other shape
    written = _write(folder, Journal.open(folder, JOB), plan=plan)
    assert written == list(range(N))


def test_another_job_is_refused_untouched(tmp_path):
    folder = _crashed(tmp_path)
    before = _tree(folder)
    with pytest.raises(
        ResumeRefusedError, match=r"partial output of another run \(different format\); delete that folder"
    ):
        Journal.open(folder, {**JOB, "format": {"bits": 8}})
    assert _tree(folder) == before


def test_stray_files_and_an_unreadable_journal(tmp_path, fresh):
    """Nothing the journal does not vouch for reaches the output: a stray file (another plan's
    shard, a half-written one) is removed; an unreadable journal means every shard is rewritten."""
    folder = _crashed(tmp_path)
    (folder / "model-00009-of-00009.safetensors").write_bytes(b"stale")
    (folder / "sub").mkdir()
    (folder / "sub" / "x").write_text("stale")
    assert _write(folder, Journal.open(folder, JOB)) == [4, 5]
    tree = _tree(folder)
    tree.pop(JOURNAL_NAME)
    assert tree == fresh
    (folder / JOURNAL_NAME).write_text("{not json")
    assert _write(folder, Journal.open(folder, JOB)) == list(range(N))


def test_every_shard_finished_writes_nothing(tmp_path, fresh):
    folder = _crashed(tmp_path, crash_at=None)  # finished, but "crashed" before the rename
    (folder / "stray").write_text("x")
    assert _write(folder, Journal.open(folder, JOB)) == []
    tree = _tree(folder)
    tree.pop(JOURNAL_NAME)
    assert tree == fresh


# --- atomic_output(resume=True) ----------------------------------------------------------------------


def test_resume_output_is_kept_on_failure_and_says_so(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(CheckpointError) as e:
        with atomic_output(out, resume=True) as tmp:
            assert tmp == partial_dir(out) == tmp_path / ".turbopack-partial-out"
            (tmp / "x").write_text("partial")
            raise CheckpointError("bad input")
    assert str(e.value) == f"bad input; partial output kept in {tmp}; rerun with --resume to continue it"
    assert (tmp / "x").read_text() == "partial" and not out.exists()
    with pytest.raises(KeyboardInterrupt) as e:
        with atomic_output(out, resume=True):
            raise KeyboardInterrupt
    assert e.value.__notes__ == [f"partial output kept in {tmp}; rerun with --resume to continue it"]
    with atomic_output(out, resume=True) as again:
        assert again == tmp and (again / "x").read_text() == "partial"
        (again / JOURNAL_NAME).write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and sorted(p.name for p in out.iterdir()) == ["x"]


def test_resume_refused_keeps_the_message_and_the_folder(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ResumeRefusedError) as e:
        with atomic_output(out, resume=True):
            raise ResumeRefusedError("another job; delete it or drop --resume")
    assert str(e.value) == "another job; delete it or drop --resume" and partial_dir(out).is_dir()


def test_one_resumed_run_at_a_time(tmp_path):
    out = tmp_path / "out"
    partial_dir(out).mkdir()
    fd = os.open(partial_dir(out), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ResumeRefusedError, match="another turbopack run is writing this partial output"):
            with atomic_output(out, resume=True):
                pass
    finally:
        os.close(fd)
    with atomic_output(out, resume=True):
        pass
    assert out.is_dir()


def test_without_resume_nothing_is_kept(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(tmp_path / "out") as tmp:
            (tmp / "x").write_text("partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_shard_is_journaled_when_complete_not_when_the_next_starts(tmp_path):
    """close_if_complete (between jobs) fsyncs and journals a full shard at once; a tensor-wide
    tensor that every row chunk of its job rewrites (a per-tensor scale) does not close it early."""
    plan = ShardPlan.build([[TensorEntry("w", torch.float32, (4, 64)), TensorEntry("s", torch.float32, (1,))],
                            [TensorEntry("x", torch.float32, (256,))]], max_shard_bytes=1024)
    journal = Journal.open(tmp_path, JOB)
    writer = ShardedWriter(tmp_path, plan, {}, journal)
    for r in range(4):  # rows one at a time; the scale with every chunk, like a per-tensor format
        writer.write("s", torch.ones(1))
        writer.write_rows("w", r, torch.full((1, 64), float(r)))
    writer.write("s", torch.ones(1))
    assert json.loads((tmp_path / JOURNAL_NAME).read_text())["shards"] == {}
    writer.close_if_complete()
    assert list(json.loads((tmp_path / JOURNAL_NAME).read_text())["shards"]) == [plan.files[0]]
    writer.write("x", torch.zeros(256))
    writer.finish()
