"""Perplexity over non-overlapping windows: the number quantization is judged by.

Each window is scored on its own from position 0 (no carried-over context), so a window of L
tokens yields L-1 predictions. That is cheaper and cruder than a sliding window, but it is the same
for every model compared, which is all a before/after-quantization comparison needs.
"""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def perplexity(
    model: nn.Module, ids: torch.Tensor, seq_len: int = 256, max_windows: int | None = None
) -> float:
    """exp(mean next-token NLL) of `model` (ids [B, T] -> logits [B, T, V]) over 1-D token `ids`.

    Tokens after the last full window are dropped; `ids` shorter than one window is scored as a
    single shorter window.
    """
    if ids.dim() != 1 or ids.numel() < 2:
        raise ValueError(f"ids must be 1-D with at least 2 tokens, got shape {tuple(ids.shape)}")
    seq_len = min(seq_len, ids.numel())
    n_windows = ids.numel() // seq_len
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    device = next(model.parameters()).device
    windows = ids[: n_windows * seq_len].view(n_windows, seq_len).to(device)

    total_nll, n_predicted = 0.0, 0
    for window in windows:  # one at a time: a batch of long windows can exhaust memory
        logits = model(window[None, :-1])[0]
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # fp32: bf16 log-softmax loses digits
        total_nll -= log_probs.gather(-1, window[1:, None]).sum().item()
        n_predicted += seq_len - 1
    return math.exp(total_nll / n_predicted)
