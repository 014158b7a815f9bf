"""The reference mixture-of-experts MLP (Mixtral, Qwen2-MoE, Qwen3-MoE), transformers' op order.

Every expert is a plain module of ``nn.Linear`` s under its Hugging Face names, so quantized
linears plug in per expert (``replace_linears``) and the router, an ``nn.Linear`` nobody plans to
quantize, stays 16-bit. ``all_experts`` (set by calibration while it collects statistics) runs
every expert on every token so each expert's linears see the whole calibration batch; the output
still mixes only the routed experts, so it is the same either way.

``grouped`` (installed at load by moe_grouped.group_moe_experts where the experts are W4 packed
for the GPU kernels) runs every selected expert of a step in one grouped launch per matmul
instead of the loop; it computes the same sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from turbopack.inference.config import ModelConfig
from turbopack.inference.norms import ACTIVATIONS


def top_k_weights(logits: torch.Tensor, top_k: int, normalise: bool, round_weights: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Routing after the router's linear, transformers' ops: softmax in fp32, top-k, optional
    renormalisation, optional rounding to the logits' dtype."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float)
    top, idx = torch.topk(probs, top_k, dim=-1)
    if normalise:
        top = top / top.sum(dim=-1, keepdim=True)
    return (top.to(logits.dtype) if round_weights else top), idx


class Expert(nn.Module):
    """down(act(gate(x)) * up(x)) with the family's linear names (Mixtral: w1, w3, w2)."""

    def __init__(self, cfg: ModelConfig, width: int, names: tuple[str, str, str]):
        super().__init__()
        self.names = names
        gate, up, down = names
        setattr(self, gate, nn.Linear(cfg.hidden, width, bias=False))
        setattr(self, up, nn.Linear(cfg.hidden, width, bias=False))
        setattr(self, down, nn.Linear(width, cfg.hidden, bias=False))
        self.act = ACTIVATIONS[cfg.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up, down = (getattr(self, n) for n in self.names)
        return down(self.act(gate(x)) * up(x))


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        m = cfg.moe
        self.top_k, self.normalise, self.round_weights = m.top_k, m.normalise, m.round_weights
        self.gate = nn.Linear(cfg.hidden, m.n_experts, bias=False)  # the router
        self.experts = nn.ModuleList(Expert(cfg, m.intermediate, m.names) for _ in range(m.n_experts))
        if m.shared_intermediate:
            self.shared_expert = Expert(cfg, m.shared_intermediate, ("gate_proj", "up_proj", "down_proj"))
            self.shared_expert_gate = nn.Linear(cfg.hidden, 1, bias=False)
        self.has_shared = bool(m.shared_intermediate)
        self.all_experts = False
        self.activation = cfg.activation.value
        self.grouped = None  # moe_grouped.GroupedExperts, or None: the loop below

    def route(self, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(top-k weights, top-k expert ids) of tokens x2 [T, hidden]."""
        return self.pick(self.gate(x2))

    def pick(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(top-k weights, top-k expert ids) of the router's logits [T, E] (kernels.router: one launch)."""
        return top_k_weights(logits, self.top_k, self.normalise, self.round_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(x, *self.route(x.reshape(-1, x.shape[-1])))

    def combine(self, x: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The routed experts' weighted sum for tokens x (and the shared expert's share), given the
        routing (``route``'s result; the fast path computes it with one kernel after the linear)."""
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.grouped is not None and not self.all_experts:
            out = self.grouped(x2, weights, idx)
        else:
            out = self.loop(x, x2, weights, idx)
        if self.has_shared:
            out = out + F.sigmoid(self.shared_expert_gate(x2)) * self.shared_expert(x2)
        return out.reshape(shape)

    def loop(self, x: torch.Tensor, x2: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x2)
        for e, expert in enumerate(self.experts):  # expert by expert, summed in HF's order
            tok, pos = torch.where(idx == e)
            if self.all_experts:  # every token through the expert (statistics), only the routed kept
                y = expert(x).reshape(-1, x2.shape[-1])[tok]
            elif len(tok):
                y = expert(x2[tok])
            else:
                continue
            out[tok] += (y * weights[tok, pos, None]).to(out.dtype)  # HF's index_add_: a token once per expert
        return out
