"""Progress lines for pipes and logs: one stderr line per decoder block off a terminal, none on one
(the rich bar is drawn there)."""

from __future__ import annotations

import io
import re

from rich.console import Console

from turbopack.packer.progress import BlockLines

LINE = re.compile(r"^block (\d+)/(\d+) gptq: \d+\.\d s, about \d+ s left$")


def lines_of(terminal: bool, blocks: int = 5, enabled: bool = True) -> list[str]:
    buf = io.StringIO()
    ticker = BlockLines("gptq", blocks, enabled, Console(file=buf, force_terminal=terminal, width=40))
    for i in range(blocks):
        ticker.done(i)
    return buf.getvalue().splitlines()


def test_one_line_per_block_off_a_terminal():
    lines = lines_of(terminal=False)
    assert [LINE.match(s).groups() for s in lines] == [(str(i), "5") for i in range(1, 6)]  # not wrapped at width 40
    assert lines[-1].endswith("about 0 s left")


def test_nothing_on_a_terminal_or_when_disabled():
    assert lines_of(terminal=True) == []
    assert lines_of(terminal=False, enabled=False) == []
