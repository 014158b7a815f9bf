"""kernels.router (the MoE router's softmax + top-k + renormalisation in one launch) against the
reference MoE.route's torch ops (moe.top_k_weights), under the Triton interpreter (compiled in the device's -m gpu
suite): the same expert ids in the same order, the same weights in the same dtype."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from turbopack.inference.kernels import router  # noqa: E402
from turbopack.inference.moe import top_k_weights  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
if DEV == "cpu" and type(router._topk_kernel).__name__ != "InterpretedFunction":
    pytest.skip("TRITON_INTERPRET=1 was not in effect when the kernels were imported", allow_module_level=True)


def distinct_logits(t: int, n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Logits without ties in ``dtype`` (steps of 1/16 in [-4, 4): bf16 resolves 1/32 there), so
    torch.topk's order is defined."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(n, generator=g).float() / 16 - n / 32 for _ in range(t)]
    return torch.stack(rows).to(dtype).to(DEV)


@pytest.mark.gpu
@pytest.mark.parametrize("n,top_k", [(8, 2), (60, 4), (128, 8), (64, 6), (160, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("normalise,round_weights", [(True, True), (False, True), (True, False)])
def test_top_k_route_is_the_reference_routing(n, top_k, dtype, normalise, round_weights):
    logits = distinct_logits(5, n, dtype, seed=n + top_k)
    assert router.supported(logits, top_k)
    weights, idx = router.top_k_route(logits, top_k, normalise, round_weights)
    want_w, want_idx = top_k_weights(logits, top_k, normalise, round_weights)  # MoE.route after its linear
    assert idx.dtype == want_idx.dtype and torch.equal(idx, want_idx)
    assert weights.dtype == want_w.dtype
    # fp32: exp's last bits. bf16: one step (2^-7 relative at most), as Triton's CPU interpreter
    # casts fp32 -> bf16 by truncation where the GPU rounds to nearest
    tol = 1e-6 if weights.dtype == torch.float32 else 2 ** -7
    assert torch.allclose(weights.float(), want_w.float(), rtol=tol, atol=1e-7)


def test_equal_probabilities_go_to_the_lower_expert():
    logits = torch.zeros(2, 16, device=DEV)
    logits[1, 5] = logits[1, 9] = 1.0
    weights, idx = router.top_k_route(logits, 2, normalise=False, round_weights=False)
    assert idx.tolist() == [[0, 1], [5, 9]]
    assert torch.allclose(weights[0], torch.full((2,), 1 / 16, device=DEV))


def test_more_experts_than_a_row_holds_take_the_torch_ops():
    assert not router.supported(torch.zeros(1, 2048, device=DEV), 8)
    assert not router.supported(torch.zeros(1, 4, device=DEV), 8)
