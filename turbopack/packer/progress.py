"""Progress on stderr (results go to stdout): one rich bar over bytes, with MB/s."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

stderr = Console(stderr=True)


class _Null:
    def add_task(self, *a, **k) -> int:
        return 0

    def update(self, *a, **k) -> None:
        pass

    def advance(self, *a, **k) -> None:
        pass


@contextlib.contextmanager
def byte_progress(label: str, total_bytes: int, enabled: bool = True) -> Iterator[tuple[object, int]]:
    """Yields (progress, task): advance the task by input bytes processed; describe per tensor."""
    if not enabled:
        yield _Null(), 0
        return
    columns = (
        TextColumn("[bold]{task.description}", table_column=None),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr, transient=False) as progress:
        task = progress.add_task(label, total=total_bytes)
        yield progress, task
