"""The runtime's forward pass: the reference Transformer's math with the glue fused.

Batch-1 decode of an 8B model reads ~4 GB of int4 weights per token (~1.5 ms at H100 bandwidth),
so the dozens of tiny elementwise kernels per layer that the reference model launches (RMSNorm's
seven ops, rotary's ten, the residual adds, SwiGLU) would cost as much as the weights. Here each
layer is: add+RMSNorm, q|k|v matmul, attention (with rotary and the K/V store in the same
launch at decode; one launch before it at prefill), o matmul, add+RMSNorm, gate|up matmul, SwiGLU,
down matmul (a W4 or 8-bit decode applies SwiGLU in gate|up's store); the residual add that ends a layer is
folded into the next layer's norm (``kernels.glue``; ``FOLD_NORMS``, off, puts that add+norm in
o_proj's and down's decode stores: ``kernels.fold``). Every family's differences ride along:
per-head q/k norms (Qwen3, Gemma 3) as one more launch, Gemma's norm style, sandwich norms (folded
into the same add+norm launches), GeLU, scale, soft-caps and sliding windows (the decode kernel
reads them from the cache), partial rotary (Phi-4-mini), local rotary tables (Gemma 3), and MoE
layers (their router and grouped experts, ``inference.moe``). Same parameters, same caches, same
outputs as ``Transformer.forward`` up to bf16 rounding (each kernel rounds once instead of per op).

The kernels run on the GPU or, for tests, Triton's CPU interpreter; ``supported`` says when.
"""

from __future__ import annotations

import torch

from turbopack.inference.config import Activation
from turbopack.inference.kernels import router
from turbopack.inference.kernels.attention import decode_attention_qkv, supports_head_dim
from turbopack.inference.kernels.fold import Folded
from turbopack.inference.kernels.glue import act_mul, add_rmsnorm, qk_norm, rope
from turbopack.inference.kernels.kv_store import rope_store, store_kv
from turbopack.inference.kernels.triton_env import interpreting, triton
from turbopack.inference.model import Transformer, band
from turbopack.inference.moe import MoE
from turbopack.inference.qlinear import QuantLinear

#: Decode steps run rotary, the new token's K/V store and attention as one launch
#: (``attention.decode_attention_qkv``); False: rotary + store, then attention (bench_e2e's A/B).
FUSED_DECODE_ATTENTION = True
#: Decode steps of up to this many tokens run a W4A16 MLP as the grouped MoE decode's one expert
#: (``moe_grouped.dense_as_one_expert``: SiLU * up in gate|up's epilogue, two launches where three);
#: 0 = never. Off: run 10 measured it 8% slower than the dense kernels at batch 1, 18% at batch 8
#: (bench_e2e's A/B; the grouped kernels are built for many small experts, not one large one).
GROUPED_MLP_MAX_TOKENS = 0
#: gate|up's decode kernel applies the MLP's activation in its store where it can (QuantLinear.glu:
#: the decode by rows, W4 and 8-bit), so the MLP is two launches; False: gate|up, act_mul, down (the A/B)
GLU_DECODE = True
#: o_proj's and down's decode add the residual and write the next RMSNorm's input in their stores, and
#: q|k|v and gate|up read it (``kernels.fold``, the decodes by rows): no add_rmsnorm launch inside
#: the decode step but the first layer's and the final one, where the norms are Llama's (no sandwich).
#: Off: run 20 measured the 8B W4A16 step 20-25 us slower with it at batch 1 and 8 (the 63 launches
#: it removes cost 62-75 us of the step, the stores' extra work more), W8A16 29 us faster at batch 1
#: but 194 us slower at batch 8 (docs/kernels.md)
FOLD_NORMS = False
_ROUTE: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}


def _kernel_cache(cache) -> bool:
    """A cache whose K/V the Triton kernels write and read (kv_quant's triton backend)."""
    if not hasattr(cache, "parts") or getattr(cache, "backend", "triton") != "triton":
        return False
    return supports_head_dim(cache.parts("k")[0].shape[-1] * (2 if cache.bits == 4 else 1))


def supported(model: Transformer) -> bool:
    """Whether forward() can run this model where its weights are: every family's math is here;
    it needs Triton on the weights' device (or its interpreter) and the fused projections."""
    dev = model.model.embed_tokens.weight.device
    fused = all(layer.self_attn.qkv_proj is not None and (isinstance(layer.ffn, MoE) or layer.ffn.gate_up_proj
                                                          is not None) for layer in model.model.layers)
    return triton is not None and (dev.type == "cuda" or interpreting()) and fused and model.config.rotary % 2 == 0


def _fold(lin, x, act: Activation | None = None, then=None):
    """lin's decode with a norm folded in (QuantLinear.fold; FOLD_NORMS), or None."""
    return lin.fold(x, act, then) if FOLD_NORMS and isinstance(lin, QuantLinear) else None


def _read(lin, h):
    """lin(h), h a tensor or a Folded: lin reads its z where its decode can, else the norm runs first."""
    if isinstance(h, Folded):
        y = _fold(lin, h)
        return y if y is not None else lin(h.plain())
    return lin(h)


def _write(lin, x: torch.Tensor, then):
    """lin(x), or with ``then`` = (residual, norm) the add and norm in lin's store: a Folded, where it can."""
    f = _fold(lin, x, then=then) if then is not None else None
    return f if f is not None else lin(x)


def _then(residual: torch.Tensor, norm, post=None):
    """The (residual, norm) that a producer's store may fold: not a sandwich's (``post``) nor at prefill."""
    return (residual, norm) if FOLD_NORMS and post is None and residual.shape[-2] == 1 else None


def mlp(block, h: torch.Tensor | Folded, activation: Activation = Activation.SILU, then=None):
    """down(act(gate(h)) * up(h)) of a fused MLP ``block``: two launches where gate|up's decode kernel
    applies the activation in its store (QuantLinear.glu, GLU_DECODE), or (SiLU) through the grouped
    decode (GROUPED_MLP_MAX_TOKENS), else three (gate|up, act_mul, down). h may be a Folded (gate|up
    reads it), and ``then`` asks down's store for the next norm (a Folded back, where it can)."""
    if isinstance(h, Folded):
        g = _fold(block.gate_up_proj, h, activation) if GLU_DECODE else None
        if g is None:
            gu = _fold(block.gate_up_proj, h)
            g = act_mul(gu, activation) if gu is not None else None
        if g is not None:
            return _write(block.down_proj, g, then)
        h = h.plain()
    x2 = h.reshape(-1, h.shape[-1])
    if x2.shape[0] <= GROUPED_MLP_MAX_TOKENS and activation is Activation.SILU:
        from turbopack.inference.kernels import cuda_moe
        from turbopack.inference.moe_grouped import dense_as_one_expert

        one = dense_as_one_expert(block.gate_up_proj, block.down_proj)  # views of the current buffers
        key = (str(x2.device), x2.shape[0])
        if key not in _ROUTE:  # every token to expert 0 with weight 1 (kept: a captured graph reads them)
            _ROUTE[key] = (torch.ones(x2.shape[0], 1, device=x2.device), torch.zeros(x2.shape[0], 1, dtype=torch.int32,
                                                                                      device=x2.device))
        weights, idx = _ROUTE[key]
        if one is not None and cuda_moe.supports(x2, weights, idx, one.gate, one.up, one.down):
            return cuda_moe.grouped_moe_cuda(x2, weights, idx, one.gate, one.up, one.down).view(h.shape)
    if GLU_DECODE and isinstance(block.gate_up_proj, QuantLinear):
        g = block.gate_up_proj.glu(h, activation)
        if g is not None:
            return _write(block.down_proj, g, then)
    return _write(block.down_proj, act_mul(block.gate_up_proj(h), activation), then)


def moe(block: MoE, h: torch.Tensor) -> torch.Tensor:
    """An MoE block on h: the router's linear, then its softmax/top-k/renormalisation as one launch
    (``kernels.router``), then the experts (grouped where stacked) and any shared expert."""
    logits = block.gate(h.reshape(-1, h.shape[-1]))
    if not router.supported(logits, block.top_k):
        return block.combine(h, *block.pick(logits))
    return block.combine(h, *router.top_k_route(logits, block.top_k, block.normalise, block.round_weights))


def attention(model: Transformer, i: int, h: torch.Tensor | Folded, tables, input_pos: torch.Tensor,
              mask: torch.Tensor | None, then=None):
    """Layer i's attention sublayer on its normed input h [B, T, hidden] (or a Folded), o_proj included.
    ``tables``: (global, local) cos/sin; ``mask``: None where the decode kernel reads the position;
    ``then``: the next norm for o_proj's store (a Folded back, where it can)."""
    cfg, attn, cache = model.config, model.model.layers[i].self_attn, model.kv_caches[i]
    b, t, _ = h.shape
    qkv = _read(attn.qkv_proj, h)
    if attn.q_norm is not None:  # Qwen3, Gemma 3: per head, before rotary
        qkv = qk_norm(qkv, attn.q_norm, attn.k_norm, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim)
    cos_sin = tables[attn.local_rope]
    if attn.window is not None and mask is not None:  # the decode kernel reads cache.window itself
        mask = band(mask, input_pos, t, attn.window, h.device)
    kernels = _kernel_cache(cache)
    if kernels and t == 1 and FUSED_DECODE_ATTENTION:  # rotary, K/V store, attention: one launch
        y = decode_attention_qkv(qkv, *cos_sin, input_pos, cache, cfg.n_heads)
    elif kernels:  # rotary + K/V store in one launch
        q = rope_store(qkv, *cos_sin, input_pos, cache, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim)
        y = cache.attention(q, input_pos, mask)
    else:
        q, k, v = rope(qkv, cos_sin, input_pos, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim)
        y = cache.attend(q, k, v, input_pos, mask)
    return _write(attn.o_proj, y.transpose(1, 2).reshape(b, t, -1), then)


@torch.no_grad()
def forward(model: Transformer, input_ids: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """Transformer.forward(input_ids, input_pos) (caches set up, projections fused)."""
    cfg = model.config
    t = input_ids.shape[1]
    x = model.embed(input_ids)
    mask = None
    # the Triton decode kernel reads the position itself; prefill, and every step of a cache the
    # kernels cannot read (a head_dim they do not support: SDPA's is_causal would align one query
    # with key 0), need the mask
    if t > 1 or not _kernel_cache(model.kv_caches[0]):
        slots = torch.arange(model.kv_caches[0].max_seq_len, device=x.device)
        mask = slots[None, :] <= input_pos[:, None]
    # global: the stored ones but for a LongRoPE prefill past its training length; local: Gemma 3's
    tables = {False: model.pass_rope(t, input_pos), True: (model.rope_cos_local, model.rope_sin_local)}
    residual, post = None, None  # post: the last sublayer's own output norm (Gemma), applied with the add
    layers = model.model.layers
    for i, layer in enumerate(layers):
        # x: the last sublayer's output, or a Folded (its store added the residual and wrote this norm's input)
        if isinstance(x, Folded):
            h, residual = x, x.residual
        else:
            h, residual = add_rmsnorm(x, residual, layer.input_layernorm, post)
        ffn = layer.ffn
        dense = not isinstance(ffn, MoE)
        then = _then(residual, layer.post_attention_layernorm) if dense and not layer.sandwich else None
        x = attention(model, i, h, tables, input_pos, mask, then)
        if isinstance(x, Folded):
            h, residual = x, x.residual
        elif layer.sandwich:
            h, residual = add_rmsnorm(x, residual, layer.pre_feedforward_layernorm, layer.post_attention_layernorm)
            post = layer.post_feedforward_layernorm
        else:
            h, residual = add_rmsnorm(x, residual, layer.post_attention_layernorm)
        nxt = _then(residual, layers[i + 1].input_layernorm, post) if i + 1 < len(layers) else None
        x = moe(ffn, h) if not dense else mlp(ffn, h, cfg.activation, nxt)
    h, _ = add_rmsnorm(x, residual, model.model.norm, post)
    return model.logits(h)


__all__ = ["act_mul", "add_rmsnorm", "attention", "decode_attention_qkv", "forward", "mlp", "moe", "qk_norm", "rope",
           "rope_store", "store_kv", "supported"]
