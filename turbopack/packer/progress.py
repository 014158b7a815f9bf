"""Progress on stderr (results go to stdout): one rich bar over bytes, with MB/s."""

from __future__ import annotations

import contextlib
import time
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


class BlockLines:
    """Progress a pipe or log can read: one stderr line per decoder block (block i/n, method,
    seconds, estimated time left), since a rich bar draws nothing until the end off a terminal.
    On a terminal the bar already shows it, so this prints nothing."""

    def __init__(self, method: str, blocks: int, enabled: bool = True, console: Console | None = None) -> None:
        self.console = console or stderr
        self.enabled = enabled and not self.console.is_terminal
        self.method, self.blocks = method, blocks
        self.t0 = self.last = time.perf_counter()

    def done(self, i: int) -> None:
        """Block ``i`` (0-based) is finished."""
        now = time.perf_counter()
        took, self.last = now - self.last, now
        left = (now - self.t0) / (i + 1) * (self.blocks - i - 1)
        if self.enabled:
            self.console.print(f"block {i + 1}/{self.blocks} {self.method}: {took:.1f} s, about {left:.0f} s left",
                               highlight=False, soft_wrap=True)


def note(message: str, enabled: bool = True) -> None:
    """A one-off progress message (e.g. while calibration data is being made)."""
    if enabled:
        stderr.print(message, highlight=False, soft_wrap=True)
