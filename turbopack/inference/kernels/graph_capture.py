"""CUDA graph capture with Python's cyclic garbage collector held off.

torch (2.x, since ``torch.compiler.config.force_cudagraph_gc`` defaults to off) no longer runs
``gc.collect()`` when a capture begins. An object that owns a CUDA graph and sits in a reference
cycle (an engine with its bound methods, say) is then freed whenever the collector next runs; if
that is mid-capture, destroying its graph executable is an operation "not permitted when stream is
capturing", which invalidates the capture being recorded: the next kernel launch fails with
"operation failed due to a previous error during capture" (seen in run 8's bench_e2e on the H200,
after the engines of an A/B loop had been dropped). Collecting first and pausing the collector for
the capture makes the timing of such frees deterministic: before the capture, never during it.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def capture(graph: torch.cuda.CUDAGraph) -> Iterator[None]:
    """``torch.cuda.graph(graph)`` with garbage collected before and the collector paused during."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.cuda.graph(graph):
            yield
    finally:
        if was_enabled:
            gc.enable()


__all__ = ["capture"]
