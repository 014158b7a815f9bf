"""Mixture-of-experts families as data: where the experts sit and how a config describes them.

Mixtral: ``block_sparse_moe`` with experts ``w1`` (gate), ``w3`` (up), ``w2`` (down); the top-k
weights are always renormalised and stay fp32. Qwen2-MoE / Qwen3-MoE: ``mlp`` with experts
``gate_proj``/``up_proj``/``down_proj``, ``norm_topk_prob`` decides the renormalisation and the
weights are rounded to the activations' dtype; Qwen2-MoE adds a shared expert behind a sigmoid
gate; layers in ``mlp_only_layers`` or off ``decoder_sparse_step`` are dense. The router
(``gate``) and the shared expert's gate are never quantized: they stay 16-bit.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MoEStyle:
    module: str  # the block's attribute (HF name) holding router and experts
    names: tuple[str, str, str]  # an expert's gate, up and down linears
    experts_keys: tuple[str, ...]  # the first present counts (transformers 5 writes Qwen3-MoE's as num_local_experts)
    intermediate_key: str
    always_normalise: bool  # Mixtral renormalises the top-k weights whatever the config says
    round_weights: bool  # the top-k weights are rounded to the activations' dtype (Qwen)
    shared_expert: bool  # reads shared_expert_intermediate_size (Qwen2-MoE)
    sparse_step: bool  # reads decoder_sparse_step and mlp_only_layers


MIXTRAL = MoEStyle("block_sparse_moe", ("w1", "w3", "w2"), ("num_local_experts",), "intermediate_size",
                   always_normalise=True, round_weights=False, shared_expert=False, sparse_step=False)
QWEN2_MOE = MoEStyle("mlp", ("gate_proj", "up_proj", "down_proj"), ("num_experts", "num_local_experts"),
                     "moe_intermediate_size",
                     always_normalise=False, round_weights=True, shared_expert=True, sparse_step=True)
QWEN3_MOE = MoEStyle("mlp", ("gate_proj", "up_proj", "down_proj"), ("num_experts", "num_local_experts"),
                     "moe_intermediate_size",
                     always_normalise=False, round_weights=True, shared_expert=False, sparse_step=True)


@dataclass(frozen=True)
class MoEConfig:
    module: str
    names: tuple[str, str, str]
    n_experts: int
    top_k: int
    intermediate: int
    normalise: bool
    round_weights: bool
    shared_intermediate: int | None  # the shared expert's width; None: no shared expert
    sparse_layers: tuple[bool, ...]  # per layer: experts (True) or a dense MLP


def moe_from_hf(hf: dict, style: MoEStyle, n_layers: int) -> MoEConfig:
    """The MoE part of a config (KeyError / TypeError for the caller to report as config errors)."""
    key = next((k for k in style.experts_keys if hf.get(k) is not None), style.experts_keys[0])
    n_experts, top_k = int(hf[key]), int(hf["num_experts_per_tok"])
    if not 0 < top_k <= n_experts:
        raise ValueError(f"num_experts_per_tok {top_k} not in 1..{n_experts}")
    sparse = (True,) * n_layers
    if style.sparse_step:
        step, dense = int(hf.get("decoder_sparse_step", 1) or 1), set(hf.get("mlp_only_layers") or ())
        sparse = tuple(i not in dense and (i + 1) % step == 0 for i in range(n_layers))
    shared = int(hf["shared_expert_intermediate_size"]) if style.shared_expert else None
    return MoEConfig(style.module, style.names, n_experts, top_k, int(hf[style.intermediate_key]),
                     style.always_normalise or bool(hf.get("norm_topk_prob", False)), style.round_weights,
                     shared or None, sparse)
