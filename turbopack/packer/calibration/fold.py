"""Folding per-input-channel scales into the op before a linear, leaving the float model unchanged.

``y = W x`` equals ``(W diag(s)) (x / s)``: multiply the consumers' weight columns by ``s`` and
divide whatever produces ``x`` by ``s``. Two producers occur in a block:

* an RMSNorm (``x = gamma * xhat``): divide its gain ``gamma`` (the weight, or Gemma's
  ``1 + weight``: the norm's own ``gain``/``set_gain``). The norm is stored in the checkpoint's
  dtype (bf16), so we round ``gamma / s`` first and scale the weights by the ratio the *stored*
  gain really applies; the float function is then unchanged up to float32 rounding.
* a linear (v_proj -> o_proj, up_proj -> down_proj): divide the producer's rows (and bias); of a
  fused producer (Phi-3's qkv_proj, gate_up_proj) only the rows of the piece feeding ``nxt``.
  For grouped-query attention, v's channel (kv head h, dim d) feeds o's columns of every query
  head in h's group, so ``s`` over v's outputs is repeated per group on o's inputs.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def fold_into_norm(
    norm: nn.Module, linears: list[nn.Linear], s: torch.Tensor, store_dtype: torch.dtype
) -> torch.Tensor:
    """Divide the norm's gain by ``s`` (as stored in ``store_dtype``), scale the linears' columns.
    Returns the effective scale applied (``s`` corrected for the norm's rounding)."""
    gamma = norm.gain()
    new = norm.set_gain(gamma / s, store_dtype)
    eff = torch.where(new != 0, gamma / torch.where(new != 0, new, torch.ones_like(new)), s)
    for lin in linears:
        lin.weight.mul_(eff[None, :])
    return eff


def gqa_expand(s: torch.Tensor, n_kv_heads: int, n_heads: int) -> torch.Tensor:
    """Scale over v_proj's outputs [n_kv * hd] -> over o_proj's inputs [n_heads * hd]."""
    hd = s.numel() // n_kv_heads
    return s.view(n_kv_heads, hd).repeat_interleave(n_heads // n_kv_heads, dim=0).reshape(-1)


def gqa_reduce(x: torch.Tensor, n_kv_heads: int, n_heads: int) -> torch.Tensor:
    """Per-channel statistic over o_proj's inputs -> over v_proj's outputs (mean over the group)."""
    hd = x.numel() // n_heads
    return x.view(n_kv_heads, n_heads // n_kv_heads, hd).mean(1).reshape(-1)


@torch.no_grad()
def fold_into_linear(prev: nn.Linear, nxt: nn.Linear, s: torch.Tensor, n_kv_heads: int | None = None,
                     n_heads: int | None = None, rows: tuple[int, int] | None = None) -> None:
    """``prev`` outputs (its ``rows`` [start, stop), default all) / s, ``nxt`` input columns * s
    (expanded over GQA groups if heads given)."""
    a, b = rows or (0, prev.weight.shape[0])
    prev.weight[a:b].div_(s[:, None])
    if prev.bias is not None:
        prev.bias[a:b].div_(s)
    cols = s if n_kv_heads is None else gqa_expand(s, n_kv_heads, n_heads)
    nxt.weight.mul_(cols[None, :])
