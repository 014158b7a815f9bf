"""Resumable outputs (``--resume``): a journal of finished shards in a kept partial output folder.

With resume, the temp output has a fixed name next to OUT (``.turbopack-partial-<OUT>``) and
survives a failed or interrupted run (see :func:`turbopack.checkpoint.atomic_output`). Each shard,
once closed and fsynced, is recorded in ``.turbopack-journal.json`` there: its sha256, size, and a
fingerprint of what it should hold (its tensor names/dtypes/shapes and header metadata, and the
job: source files, options, tool version). A rerun skips a shard only when the shard it would
write now has the same fingerprint AND the file on disk still hashes to the recorded sha256;
everything else is removed and rewritten. A journal written for another job is refused (the user
deletes the partial folder or drops --resume): outputs of two jobs are never mixed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from turbopack.checkpoint.safetensors_stream import ST_DTYPES, TensorEntry, sha256_file
from turbopack.errors import Interrupted, ResumeRefusedError

PARTIAL_PREFIX = ".turbopack-partial-"
JOURNAL_NAME = ".turbopack-journal.json"
JOURNAL_VERSION = 1


def partial_dir(out: Path) -> Path:
    """The kept temp output of a --resume run for OUT: derived from OUT alone, so a rerun finds it."""
    out = Path(out)
    return out.resolve().parent / f"{PARTIAL_PREFIX}{out.name}"


def kept_note(tmp: Path) -> str:
    return f"partial output kept in {tmp}; rerun with --resume to continue it"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _digest(obj: Any) -> str:
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()


def source_fingerprint(folder: Path, files: list[Path], manifest_sha256: str | None = None) -> dict[str, Any]:
    """What identifies a source without reading its weights: config.json's bytes, and either the
    manifest's sha256 (which holds every shard's sha256: our own quantized folders) or each weight
    file's size and mtime (a Hugging Face folder, where hashing 140 GB would take longer than a run)."""
    config = Path(folder) / "config.json"
    fp: dict[str, Any] = {"config": hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None}
    if manifest_sha256 is not None:
        fp["manifest"] = manifest_sha256
    else:
        fp["files"] = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(set(files))}
    return fp


class Journal:
    """The finished shards of one partial output folder ``root`` for one ``job``.

    Every ShardedWriter sharing a journal is created before the first write: creating one claims
    its finished shards, and the first write removes every file nobody claimed (a half-written
    shard, another plan's leftovers), so only this job's files can reach OUT."""

    def __init__(self, root: Path, job: dict[str, Any]):
        self.root = Path(root)
        self.job = json.loads(_canonical(job))  # as it reads back from disk (tuples become lists)
        self.job_sha256 = _digest(self.job)
        self.entries: dict[str, dict] = {}  # what the journal on disk lists
        self.claimed: dict[str, dict] = {}  # entries verified for this run (skipped shards)
        self._started = False

    @classmethod
    def open(cls, root: Path, job: dict[str, Any]) -> Journal:
        """The journal in ``root`` (empty when there is none, or it is unreadable: then every shard
        is rewritten); raises ResumeRefusedError, touching nothing, when it belongs to another job."""
        journal = cls(root, job)
        with contextlib.suppress(OSError, ValueError):
            data = json.loads((journal.root / JOURNAL_NAME).read_text())
            if (
                isinstance(data, dict)
                and data.get("version") == JOURNAL_VERSION
                and isinstance(data.get("shards"), dict)
            ):
                journal._check_job(data.get("job"))
                journal.entries = {k: v for k, v in data["shards"].items() if isinstance(v, dict)}
        return journal

    def _check_job(self, old: Any) -> None:
        if old == self.job:
            return
        differs = sorted(k for k in set(self.job) | set(old if isinstance(old, dict) else {})
                         if not isinstance(old, dict) or old.get(k) != self.job.get(k))
        what = ", ".join(differs[:3]) or "job"
        raise ResumeRefusedError(f"{self.root}: partial output of another run (different {what}); delete that folder "
                                 f"to start over, or drop --resume")

    def rel(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def fingerprint(self, rel: str, entries: list[TensorEntry], metadata: dict[str, str]) -> str:
        """What the shard ``rel`` should contain: its tensors in order, its header metadata, the job."""
        tensors = [[e.name, ST_DTYPES[e.dtype], list(e.shape)] for e in entries]
        return _digest({"job": self.job_sha256, "file": rel, "metadata": metadata, "tensors": tensors})

    def claim(self, rel: str, fingerprint: str) -> dict | None:
        """{bytes, sha256} of shard ``rel`` when it is finished for this plan, else None (rewrite it)."""
        entry = self.entries.get(rel)
        path = self.root / rel
        if not entry or entry.get("fingerprint") != fingerprint or not path.is_file():
            return None
        if path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
            return None  # changed or corrupted since it was recorded
        self.claimed[rel] = entry
        return {"bytes": entry["bytes"], "sha256": entry["sha256"]}

    def start(self) -> None:
        """Before the first write: keep only claimed shards (on disk and in the journal)."""
        if self._started:
            return
        self._started = True
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and path.name != JOURNAL_NAME and self.rel(path) not in self.claimed:
                path.unlink()
        self.entries = dict(self.claimed)
        self._save()

    def record(self, rel: str, fingerprint: str, info: dict) -> None:
        """Shard ``rel`` is closed and fsynced: from now on a rerun may skip it."""
        self.entries[rel] = {"fingerprint": fingerprint, "bytes": info["bytes"], "sha256": info["sha256"]}
        self._save()

    def _save(self) -> None:
        # write-temp + fsync + rename: a crash leaves the old journal or the new one, never half of one
        path, tmp = self.root / JOURNAL_NAME, self.root / (JOURNAL_NAME + ".tmp")
        data = {"version": JOURNAL_VERSION, "job": self.job, "shards": self.entries}
        with open(tmp, "w") as f:
            f.write(json.dumps(data, indent=1, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(self.root)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def interrupt_keeps_partial(out: Path, resume: bool) -> Iterator[None]:
    """For the CLI: Ctrl-C in a --resume run becomes Interrupted, whose one line says where the
    partial output is (typer would turn it into a bare exit 130, "no output was left behind")."""
    try:
        yield
    except KeyboardInterrupt:
        if resume and partial_dir(out).is_dir():
            raise Interrupted(f"interrupted; {kept_note(partial_dir(out))}") from None
        raise
