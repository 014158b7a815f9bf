"""The grouped W4A16 path of the MoE block: its experts' packed weights stacked once, at load.

``stack_experts(moe)`` copies each expert's packed gate / up / down tensors into one [E, ...]
buffer per linear and points the expert's QuantLinear buffers at its slice of it, so the stack
costs no memory once loaded (while one layer is being stacked its per-expert tensors and the stack
coexist: one MoE layer's expert bytes extra, ~0.3 GB for Qwen3-30B-A3B) and the per-expert loop
(calibration's all-experts mode, or a caller that drops ``moe.grouped``) still runs on the same
bytes. It applies when every expert is a QuantLinear of one w4 layout without bias whose kernels
run here: the CUDA backend on a GPU, or under the Triton interpreter (tests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from turbopack.inference.kernels.interpret import interpreting
from turbopack.inference.moe import MoE
from turbopack.inference.qlinear import Backend, QuantLinear
from turbopack.layouts.base import LayoutName

W4_LAYOUTS = frozenset({LayoutName.W4_T16X64, LayoutName.W4_T64X64})


@dataclass(frozen=True)
class GroupedExperts:
    """Callable (x2 [T, hidden], top-k weights [T, k], ids [T, k]) -> [T, hidden]."""

    gate: object  # moe_w4.StackedW4 (the kernels module imports triton: typed loosely here)
    up: object
    down: object
    act: str

    def __call__(self, x2: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        from turbopack.inference.kernels.moe_w4 import grouped_moe

        return grouped_moe(x2, weights, idx, self.gate, self.up, self.down, self.act)


def _eligible(mods: list[nn.Module]) -> bool:
    first = mods[0]
    if not isinstance(first, QuantLinear) or first.layout is None or first.layout.name not in W4_LAYOUTS:
        return False
    runs_here = first.backend is Backend.CUDA and (first.qweight.is_cuda or interpreting())
    same = all(isinstance(m, QuantLinear) and m.fmt == first.fmt and m.layout == first.layout
               and m.shape == first.shape and m.backend is first.backend and m.bias is None for m in mods)
    return runs_here and same


def _stack(mods: list[QuantLinear]):
    from turbopack.inference.kernels.moe_w4 import StackedW4

    stacked = {}
    for suffix in mods[0].suffixes:
        first = getattr(mods[0], suffix)
        buf = torch.empty((len(mods), *first.shape), dtype=first.dtype, device=first.device)
        for i, m in enumerate(mods):
            buf[i].copy_(getattr(m, suffix))
            setattr(m, suffix, buf[i])  # the expert now reads its slice: its own tensor is freed
        stacked[suffix] = buf
    return StackedW4(stacked["qweight"], stacked["scales"], stacked.get("zeros"), mods[0].shape,
                     mods[0].fmt.group_size)


def stack_experts(moe: nn.Module) -> GroupedExperts | None:
    """Stack ``moe``'s experts for the grouped kernels; None (the loop stays) where they do not apply."""
    from turbopack.inference.kernels.moe_w4 import ACTIVATIONS

    names = moe.experts[0].names
    linears = [[getattr(e, n) for e in moe.experts] for n in names]
    act = getattr(moe, "activation", None)
    if act not in ACTIVATIONS or not all(_eligible(mods) for mods in linears):
        return None
    gate, up, down = (_stack(mods) for mods in linears)
    return GroupedExperts(gate, up, down, act)


def dense_as_one_expert(gate_up: nn.Module, down: nn.Module) -> GroupedExperts | None:
    """A dense SwiGLU MLP (fused gate|up, then down) as the grouped decode's one expert: E = 1,
    top-1, routing weight 1, so gate|up with SiLU(g) * u in its epilogue and down are two launches
    where the dense path takes three. gate and up are the two halves of gate|up's packed rows
    (views, no copy: every packed tensor is tile rows along dim 0, and gate's rows end on a tile
    boundary). None where the grouped kernels do not apply."""
    from turbopack.inference.kernels.moe_w4 import StackedW4

    if not (_eligible([gate_up]) and _eligible([down]) and gate_up.fmt == down.fmt):
        return None
    rows, hidden = gate_up.shape
    inter = rows // 2
    if rows % 2 or down.shape != (hidden, inter) or gate_up.layout.padding((inter, hidden)).n_pad != inter:
        return None

    def one(lin: QuantLinear, part: slice | None, shape: tuple[int, int]) -> StackedW4:
        ts = [getattr(lin, s, None) for s in ("qweight", "scales", "zeros")]
        ts = [None if t is None else (t if part is None else t[part]).unsqueeze(0) for t in ts]
        return StackedW4(ts[0], ts[1], ts[2], shape, lin.fmt.group_size)

    half = gate_up.qweight.shape[0] // 2
    return GroupedExperts(one(gate_up, slice(0, half), (inter, hidden)),
                          one(gate_up, slice(half, None), (inter, hidden)), one(down, None, down.shape), "silu")


def group_moe_experts(model: nn.Module, stack: Callable[[nn.Module], GroupedExperts | None] = stack_experts) -> int:
    """Install ``moe.grouped`` on every MoE block whose experts qualify; returns how many."""
    count = 0
    for m in model.modules():
        if isinstance(m, MoE) and m.grouped is None:
            m.grouped = stack(m)
            count += m.grouped is not None
    return count
