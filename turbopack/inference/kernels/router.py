"""An MoE router's top-k in one launch (Triton): softmax over the router's logits in fp32, the k
largest probabilities in descending order with their expert ids, renormalised where the family
renormalises, rounded to the activations' dtype where it rounds (``inference.moe.MoE.route``'s
ops: softmax, topk, sum, divide, cast — five launches or more per MoE layer and decode step, the
router's linear aside, which stays cuBLAS's GEMV).

Top-k is k rounds of argmax over one row of experts held in registers (k <= 8 and a few hundred
experts in the families served); equal probabilities go to the lower expert id, where torch.topk
leaves the order of ties unspecified.
"""

from __future__ import annotations

import torch

from turbopack.inference.kernels import pdl
from turbopack.inference.kernels.triton_env import interpreting, tl, triton

if triton is not None:
    from turbopack.inference.kernels.epilogue import pdl_enter

    @triton.jit
    def _topk_kernel(LOGITS, W, IDX, n_experts, TOP_K: tl.constexpr, K_PAD: tl.constexpr, NORMALISE: tl.constexpr,
                     BLOCK_E: tl.constexpr, PDL: tl.constexpr):
        pdl_enter(PDL)
        row = tl.program_id(0)
        e = tl.arange(0, BLOCK_E)
        logits = tl.load(LOGITS + row * n_experts + e, mask=e < n_experts, other=float("-inf")).to(tl.float32)
        p = tl.exp(logits - tl.max(logits, 0))
        p = p / tl.sum(p, 0)
        k = tl.arange(0, K_PAD)  # TOP_K slots, padded to a power of two
        top = tl.zeros([K_PAD], dtype=tl.float32)
        ids = tl.zeros([K_PAD], dtype=tl.int64)
        left = tl.where(e < n_experts, p, -1.0)  # probabilities are >= 0: -1 marks taken or absent
        for i in tl.static_range(TOP_K):
            best = tl.max(left, 0)
            at = tl.min(tl.where(left == best, e, BLOCK_E), 0)  # the lowest id among equals
            top = tl.where(k == i, best, top)
            ids = tl.where(k == i, at.to(tl.int64), ids)
            left = tl.where(e == at, -1.0, left)
        if NORMALISE:
            top = top / tl.sum(top, 0)
        tl.store(W + row * TOP_K + k, top.to(W.dtype.element_ty), mask=k < TOP_K)
        tl.store(IDX + row * TOP_K + k, ids, mask=k < TOP_K)


def supported(logits: torch.Tensor, top_k: int) -> bool:
    """Whether :func:`top_k_route` runs for these logits [T, E] (a GPU, or the interpreter)."""
    return (triton is not None and (logits.device.type == "cuda" or interpreting()) and logits.dim() == 2
            and 1 <= top_k <= logits.shape[1] <= 1024)


def top_k_route(logits: torch.Tensor, top_k: int, normalise: bool, round_weights: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [T, k], expert ids [T, k] int64) of router logits [T, E]: MoE.route after its linear."""
    t, n = logits.shape
    logits = logits.contiguous()
    weights = torch.empty(t, top_k, device=logits.device, dtype=logits.dtype if round_weights else torch.float32)
    idx = torch.empty(t, top_k, device=logits.device, dtype=torch.int64)
    _topk_kernel[(t,)](logits, weights, idx, n, TOP_K=top_k, K_PAD=triton.next_power_of_2(top_k), NORMALISE=normalise,
                       BLOCK_E=max(16, triton.next_power_of_2(n)), num_warps=4 if n > 256 else 1,
                       **pdl.triton_args(logits.device))
    return weights, idx
