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
    zero, as every kernel that adds into them or counts on them assumes. Run 34's tuner found a
    stream-K kernel that had left its planes in the fp32 one; a test that breaks it fails here, and
    the buffers are zeroed again so the next test starts clean."""
    yield
    if request.node.get_closest_marker("gpu") is None:
        return
    import torch

    if not torch.cuda.is_available():
        return
    from turbopack.inference.kernels import epilogue

    torch.cuda.synchronize()
    dirty = []
    for key, buf in list(epilogue._WS.items()):
        shared = isinstance(key[1], torch.dtype) or str(key[1]).startswith("counters:")
        if shared and buf.is_cuda and buf.any():
            dirty.append(f"{key[1]}: {int(buf.count_nonzero())} nonzero")
            buf.zero_()
    assert not dirty, f"left non-zero: {'; '.join(dirty)}"
