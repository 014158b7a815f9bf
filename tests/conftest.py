"""Shared fixtures: tiny random Hugging Face models written to disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tinymodels import make_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2", arch="qwen2")


@pytest.fixture(autouse=True)
def zeroed_buffers_stay_zeroed(request):
    """After every GPU test: the shared zeroed buffers (epilogue.workspace, epilogue.counters) are
    zero, as every kernel that adds into them or counts on them assumes (run 34's tuner found a
    stream-K grid that had left its plane in the fp32 one). A test that breaks it fails here, and
    the buffers are zeroed again so the next test starts clean."""
    yield
    if request.node.get_closest_marker("gpu") is None:
        return
    import torch

    if not torch.cuda.is_available():
        return
    from turbopack.inference.kernels.epilogue import dirty_zeroed_buffers

    dirty = dirty_zeroed_buffers()
    assert not dirty, f"left non-zero: {'; '.join(dirty)}"
