"""Quality metrics: a model compared with itself is identical; a perturbed one is measurably not."""

from __future__ import annotations

import math

import pytest
import torch

from turbopack.assets import bundled_model_dir
from turbopack.evaluation.metrics import Reference, compare, heldout_ids, windows_of
from turbopack.inference.loader import load_model


@pytest.fixture(scope="module")
def model_and_windows():
    folder = bundled_model_dir()
    model = load_model(folder, dtype=torch.float32)
    return model, windows_of(heldout_ids(folder, None, model.config.vocab), 64, 24)


def test_self_comparison_is_exact(model_and_windows):
    model, windows = model_and_windows
    c = compare(model, Reference(model, windows))
    assert c.kl == pytest.approx(0, abs=1e-6) and c.top1_agreement == 1.0
    assert c.ppl_change_pct == pytest.approx(0, abs=1e-9) and c.ppl_change_stderr_pct == pytest.approx(0, abs=1e-9)


def test_perturbed_model_differs_with_a_stderr(model_and_windows):
    model, windows = model_and_windows
    ref = Reference(model, windows)
    noisy = load_model(bundled_model_dir(), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in noisy.named_parameters():
            if name.endswith("proj.weight"):
                p.add_(torch.randn(p.shape, generator=g) * p.std())
    c = compare(noisy, ref)
    assert c.kl > 1e-3 and c.top1_agreement < 0.99
    assert 0 < 2 * c.ppl_change_stderr_pct < c.ppl_change_pct  # clearly worse, beyond the noise
    assert c.against_perplexity == pytest.approx(ref.perplexity) and math.isfinite(c.perplexity)


def test_windows_of_drops_the_tail():
    ids = torch.arange(10)
    assert windows_of(ids, 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert windows_of(ids, 4, max_windows=1).shape == (1, 4)


def test_reference_beyond_its_cache_recomputes_the_same(model_and_windows, monkeypatch):
    from turbopack.evaluation import metrics

    model, windows = model_and_windows
    full = compare(model, Reference(model, windows))
    monkeypatch.setattr(metrics, "CACHE_BYTES", 1)  # nothing cached: every window recomputed
    bounded = Reference(model, windows)
    assert not bounded._cache
    assert compare(model, bounded) == full
