"""Sharded, streaming output: plan shards from known tensor specs, then fill them in order.

The plan keeps each job's tensors (e.g. a weight's qweight/scales/zeros) in one shard and cuts a
new shard when the next job would pass ``max_shard_bytes``. Shards are written one at a time, so
only one file is open; names follow Hugging Face (``model-00001-of-00003.safetensors`` plus
``model.safetensors.index.json``, or a single ``model.safetensors``). With a resume journal
(turbopack.checkpoint.resume), shards finished by an earlier run are not written again: the
producer asks :meth:`ShardedWriter.skips` and leaves those tensors out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from turbopack.checkpoint.resume import Journal
from turbopack.checkpoint.safetensors_stream import StreamingWriter, TensorEntry, sha256_file

DEFAULT_SHARD_BYTES = 4 << 30


@dataclass(frozen=True)
class ShardPlan:
    files: list[str]
    entries: list[list[TensorEntry]]

    @classmethod
    def build(cls, jobs: list[list[TensorEntry]], max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> ShardPlan:
        shards: list[list[TensorEntry]] = [[]]
        size = 0
        for job in jobs:
            nbytes = sum(e.nbytes for e in job)
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].extend(job)
            size += nbytes
        n = len(shards)
        files = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        return cls(files, shards)


class ShardedWriter:
    """Writes the planned shards into ``folder``; tensors must arrive in plan order (shard by shard),
    except those of shards the ``journal`` says are finished (see :meth:`skips`)."""

    def __init__(self, folder: Path, plan: ShardPlan, metadata: dict[str, str] | None = None,
                 journal: Journal | None = None):
        self.folder = folder
        self.plan = plan
        self.metadata = metadata or {}
        self.shard_of = {e.name: i for i, shard in enumerate(plan.entries) for e in shard}
        self._current: tuple[int, StreamingWriter] | None = None
        self.shards: dict[str, dict] = {}
        self.journal = journal
        self._fingerprints: dict[int, str] = {}
        self.resumed: set[int] = set()  # shard indices an earlier run finished
        for i, file in enumerate(plan.files if journal is not None else ()):
            rel = journal.rel(folder / file)
            self._fingerprints[i] = journal.fingerprint(rel, plan.entries[i], self.metadata)
            info = journal.claim(rel, self._fingerprints[i])
            if info is not None:
                self.resumed.add(i)
                self.shards[file] = info

    def skips(self, name: str) -> bool:
        """Tensor ``name`` is in a shard an earlier run finished: do not compute it again."""
        return self.shard_of[name] in self.resumed

    def _writer(self, name: str) -> StreamingWriter:
        idx = self.shard_of[name]
        if self.plan.files[idx] in self.shards:  # reopening would truncate it
            raise RuntimeError(f"{name}: its shard is already complete (written, or resumed: check skips() first)")
        if self._current is None or self._current[0] != idx:
            if self.journal is not None:
                self.journal.start()
            if self._current is not None:
                if idx < self._current[0]:
                    raise RuntimeError(f"{name}: written out of shard order")
                self._close_current()
            path = self.folder / self.plan.files[idx]
            self._current = (idx, StreamingWriter(path, self.plan.entries[idx], self.metadata))
        return self._current[1]

    def write_rows(self, name: str, row_start: int, chunk: torch.Tensor) -> None:
        self._writer(name).write_rows(name, row_start, chunk)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self._writer(name).write(name, tensor)

    def close_if_complete(self) -> None:
        """Between jobs: close (fsync, journal) the current shard once it is fully written, rather
        than when the next shard starts, so a crash in between does not cost a finished shard. Not
        after each write: a tensor-wide tensor (a per-tensor scale) may be rewritten by every row
        chunk of its job."""
        if self._current is not None and self._current[1].complete:
            self._close_current()

    def _close_current(self) -> None:
        idx, w = self._current  # type: ignore[misc]
        w.close()
        info = {"bytes": w.size, "sha256": sha256_file(w.path)}
        self.shards[self.plan.files[idx]] = info
        if self.journal is not None:  # closed means fsynced: from now on a resumed run may skip it
            self.journal.record(self.journal.rel(w.path), self._fingerprints[idx], info)
        self._current = None

    def finish(self) -> dict[str, dict]:
        """Close the last shard, write the index (if sharded); return {file: {bytes, sha256}}."""
        if self.journal is not None:
            self.journal.start()  # every shard resumed: nothing was written, so nothing pruned yet
        if self._current is not None:
            self._close_current()
        missing = [f for f in self.plan.files if f not in self.shards]
        if missing:
            raise RuntimeError(f"shards never written: {missing}")
        if len(self.plan.files) > 1:
            weight_map = {e.name: self.plan.files[i] for i, shard in enumerate(self.plan.entries) for e in shard}
            total = sum(e.nbytes for shard in self.plan.entries for e in shard)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return {f: self.shards[f] for f in self.plan.files}  # plan order, resumed shards included
