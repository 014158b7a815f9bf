"""graph_capture.capture: garbage collected before a CUDA graph capture, the collector paused during
it and restored after, also when the captured code raises (on the CPU with torch.cuda.graph stood
in for; on a GPU a real capture replays)."""

from __future__ import annotations

import contextlib
import gc

import pytest
import torch

from turbopack.inference.kernels import graph_capture


def _fake_graph(monkeypatch, seen):
    @contextlib.contextmanager
    def graph(g):
        seen.append(("enter", gc.isenabled()))
        yield
        seen.append(("exit", gc.isenabled()))

    monkeypatch.setattr(torch.cuda, "graph", graph)


def test_collector_paused_during_the_capture_and_restored(monkeypatch):
    seen, collected = [], []
    _fake_graph(monkeypatch, seen)
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(1) or 0)
    assert gc.isenabled()
    with graph_capture.capture(object()):
        seen.append(("body", gc.isenabled()))
    assert collected == [1]
    assert seen == [("enter", False), ("body", False), ("exit", False)]
    assert gc.isenabled()


def test_collector_restored_when_the_capture_raises(monkeypatch):
    _fake_graph(monkeypatch, [])
    with pytest.raises(RuntimeError, match="boom"):
        with graph_capture.capture(object()):
            raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_paused_collector_stays_paused(monkeypatch):
    _fake_graph(monkeypatch, [])
    gc.disable()
    try:
        with graph_capture.capture(object()):
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_real_capture_replays():
    x = torch.ones(4, device="cuda")
    g = torch.cuda.CUDAGraph()
    y = x * 2
    torch.cuda.synchronize()
    with graph_capture.capture(g):
        y = x * 2
    x.fill_(3)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, torch.full((4,), 6.0, device="cuda")) and gc.isenabled()
