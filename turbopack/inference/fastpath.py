"""The runtime's forward pass: the reference Transformer's math with the glue fused.

Batch-1 decode of an 8B model reads ~4 GB of int4 weights per token (~1.5 ms at H100 bandwidth),
so the dozens of tiny elementwise kernels per layer that the reference model launches (RMSNorm's
seven ops, rotary's ten, the residual adds, SwiGLU) would cost as much as the weights. Here each
layer is: add+RMSNorm, q|k|v matmul, attention (with rotary and the K/V store in the same
launch at decode; one launch before it at prefill), o matmul, add+RMSNorm, gate|up matmul,
SwiGLU, down matmul; the residual add that ends a layer is
folded into the next layer's norm. Same parameters, same caches, same outputs as
``Transformer.forward`` up to bf16 rounding (each kernel rounds once instead of per op).

The kernels run on the GPU or, for tests, Triton's CPU interpreter; ``supported`` says when.
"""

from __future__ import annotations

import torch

from turbopack.inference.kernels import pdl
from turbopack.inference.kernels.attention import decode_attention_qkv, supports_head_dim
from turbopack.inference.kernels.kv_store import rope_store, store_kv
from turbopack.inference.kernels.triton_env import interpreting, tl, triton
from turbopack.inference.model import Transformer

if triton is not None:
    from turbopack.inference.kernels.epilogue import pdl_enter


    @triton.jit
    def _add_rmsnorm_kernel(X, R, W, OUT, R_OUT, n, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr,
                            PDL: tl.constexpr):
        pdl_enter(PDL)
        row = tl.program_id(0)
        c = tl.arange(0, BLOCK)
        m = c < n
        x = tl.load(X + row * n + c, mask=m, other=0.0)
        if HAS_RES:
            x = (x.to(tl.float32) + tl.load(R + row * n + c, mask=m, other=0.0).to(tl.float32)).to(X.dtype.element_ty)
            tl.store(R_OUT + row * n + c, x, mask=m)
        xf = x.to(tl.float32)
        inv = 1.0 / tl.sqrt(tl.sum(xf * xf, 0) / n + eps)
        y = (xf * inv).to(X.dtype.element_ty).to(tl.float32) * tl.load(W + c, mask=m, other=0.0).to(tl.float32)
        tl.store(OUT + row * n + c, y.to(OUT.dtype.element_ty), mask=m)

    @triton.jit
    def _qk_norm_kernel(QKV, QW, KW, stride_row, n_q, eps, D, BLOCK: tl.constexpr, PDL: tl.constexpr):
        """One (token, head) of q or k in place: RMSNorm over the head's D channels (Qwen3's
        q_norm / k_norm, Llama-style: weight * round(x_hat)), before rotary reads it."""
        pdl_enter(PDL)
        row, head = tl.program_id(0), tl.program_id(1)
        c = tl.arange(0, BLOCK)
        m = c < D
        ptr = QKV + row * stride_row + head * D + c
        xf = tl.load(ptr, mask=m, other=0.0).to(tl.float32)
        if head < n_q:
            w = tl.load(QW + c, mask=m, other=0.0).to(tl.float32)
        else:
            w = tl.load(KW + c, mask=m, other=0.0).to(tl.float32)
        inv = 1.0 / tl.sqrt(tl.sum(xf * xf, 0) / D + eps)
        y = (xf * inv).to(QKV.dtype.element_ty).to(tl.float32) * w
        tl.store(ptr, y.to(QKV.dtype.element_ty), mask=m)

    @triton.jit
    def _silu_mul_kernel(GU, OUT, n, BLOCK: tl.constexpr, PDL: tl.constexpr):
        pdl_enter(PDL)
        row, blk = tl.program_id(0), tl.program_id(1)
        c = blk * BLOCK + tl.arange(0, BLOCK)
        m = c < n
        g = tl.load(GU + row * 2 * n + c, mask=m, other=0.0).to(tl.float32)
        u = tl.load(GU + row * 2 * n + n + c, mask=m, other=0.0).to(tl.float32)
        s = (g / (1.0 + tl.exp(-g))).to(OUT.dtype.element_ty).to(tl.float32)
        tl.store(OUT + row * n + c, (s * u).to(OUT.dtype.element_ty), mask=m)

    @triton.jit
    def _rope_kernel(QKV, COS, SIN, POS, Q, K, T, n_q, n_kv, stride_row, HALF: tl.constexpr):
        """One (token, head) of q or k: rotate the pairs (i, i + D/2) by the position's angle and
        write it [B, H, T, D]."""
        row, head = tl.program_id(0), tl.program_id(1)  # row = b * T + t
        b, t = row // T, row % T
        pos = tl.load(POS + t)
        i = tl.arange(0, HALF)
        src = QKV + row * stride_row + head * 2 * HALF
        x1 = tl.load(src + i).to(tl.float32)
        x2 = tl.load(src + HALF + i).to(tl.float32)
        c = tl.load(COS + pos * 2 * HALF + i)
        s = tl.load(SIN + pos * 2 * HALF + i)
        if head < n_q:
            dst = Q + ((b * n_q + head) * T + t) * 2 * HALF
        else:
            dst = K + ((b * n_kv + head - n_q) * T + t) * 2 * HALF
        tl.store(dst + i, (x1 * c - x2 * s).to(Q.dtype.element_ty))
        tl.store(dst + HALF + i, (x2 * c + x1 * s).to(Q.dtype.element_ty))


#: Decode steps run rotary, the new token's K/V store and attention as one launch
#: (``attention.decode_attention_qkv``); False: rotary + store, then attention (bench_e2e's A/B).
FUSED_DECODE_ATTENTION = True
#: Decode steps of up to this many tokens run a W4A16 MLP as the grouped MoE decode's one expert
#: (``moe_grouped.dense_as_one_expert``: SiLU * up in gate|up's epilogue, two launches where three);
#: 0 = never. Off: run 10 measured it 8% slower than the dense kernels at batch 1, 18% at batch 8
#: (bench_e2e's A/B; the grouped kernels are built for many small experts, not one large one).
GROUPED_MLP_MAX_TOKENS = 0
_ROUTE: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}


def _kernel_cache(cache) -> bool:
    """A cache whose K/V the Triton kernels write and read (kv_quant's triton backend)."""
    if not hasattr(cache, "parts") or getattr(cache, "backend", "triton") != "triton":
        return False
    return supports_head_dim(cache.parts("k")[0].shape[-1] * (2 if cache.bits == 4 else 1))


def supported(model: Transformer) -> bool:
    """Whether forward() can run this model where its weights are."""
    dev = model.model.embed_tokens.weight.device
    cfg = model.config
    if not cfg.llama_math:  # Gemma norms, GeLU, soft-caps, partial rotary, experts: the reference forward
        return False
    fused = all(
        layer.self_attn.qkv_proj is not None and layer.mlp.gate_up_proj is not None for layer in model.model.layers
    )
    return triton is not None and (dev.type == "cuda" or interpreting()) and fused and cfg.head_dim % 2 == 0


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor | None, norm) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(x + residual), x + residual); residual None means 0 (the first layer)."""
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    out = torch.empty_like(x2)
    r_out = torch.empty_like(x2) if residual is not None else x2
    r = residual.reshape(-1, n) if residual is not None else x2
    _add_rmsnorm_kernel[(x2.shape[0],)](x2, r, norm.weight, out, r_out, n, norm.eps, HAS_RES=residual is not None,
                                        BLOCK=triton.next_power_of_2(n), num_warps=8 if n >= 4096 else 4,
                                        **pdl.triton_args(x.device))
    return out.view(x.shape), r_out.view(x.shape)


def qk_norm(qkv: torch.Tensor, q_norm, k_norm, n_q: int, n_kv: int, d: int) -> torch.Tensor:
    """q_norm / k_norm on each head of q and k inside qkv [B, T, (n_q + 2 n_kv) D], in place."""
    flat = qkv.reshape(-1, qkv.shape[-1])
    _qk_norm_kernel[(flat.shape[0], n_q + n_kv)](flat, q_norm.weight, k_norm.weight, flat.stride(0), n_q, q_norm.eps,
                                                d, BLOCK=triton.next_power_of_2(d), num_warps=1,
                                                **pdl.triton_args(qkv.device))
    return qkv


def silu_mul(gu: torch.Tensor) -> torch.Tensor:
    n = gu.shape[-1] // 2
    g2 = gu.reshape(-1, 2 * n)
    out = torch.empty(g2.shape[0], n, device=gu.device, dtype=gu.dtype)
    block = min(2048, triton.next_power_of_2(n))
    _silu_mul_kernel[(g2.shape[0], triton.cdiv(n, block))](g2, out, n, BLOCK=block, num_warps=4,
                                                           **pdl.triton_args(gu.device))
    return out.view(*gu.shape[:-1], n)


def rope(qkv: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor], input_pos: torch.Tensor, n_q: int, n_kv: int,
         d: int):
    """qkv [B, T, (n_q + 2 n_kv) D] -> q [B, n_q, T, D], k [B, n_kv, T, D] rotated by the cos/sin
    ``tables`` (rows by position), v (a view)."""
    b, t, _ = qkv.shape
    q = torch.empty(b, n_q, t, d, device=qkv.device, dtype=qkv.dtype)
    k = torch.empty(b, n_kv, t, d, device=qkv.device, dtype=qkv.dtype)
    flat = qkv.reshape(b * t, -1)
    _rope_kernel[(b * t, n_q + n_kv)](flat, *tables, input_pos, q, k, t, n_q, n_kv,
                                      flat.stride(0), HALF=d // 2, num_warps=1)
    v = qkv[..., (n_q + n_kv) * d:].view(b, t, n_kv, d).transpose(1, 2)
    return q, k, v


def mlp(block, h: torch.Tensor) -> torch.Tensor:
    """down(SiLU(gate(h)) * up(h)) of a fused MLP ``block``: three launches, or two through the
    grouped decode (GROUPED_MLP_MAX_TOKENS)."""
    x2 = h.reshape(-1, h.shape[-1])
    if x2.shape[0] <= GROUPED_MLP_MAX_TOKENS:
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
    return block.down_proj(silu_mul(block.gate_up_proj(h)))


@torch.no_grad()
def forward(model: Transformer, input_ids: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """Transformer.forward(input_ids, input_pos) (caches set up, projections fused)."""
    cfg = model.config
    b, t = input_ids.shape
    x = model.model.embed_tokens(input_ids)
    mask = None
    # the Triton decode kernel reads the position itself; prefill, and every step of a cache the
    # kernels cannot read (a head_dim they do not support: SDPA's is_causal would align one query
    # with key 0), need the mask
    if t > 1 or not _kernel_cache(model.kv_caches[0]):
        slots = torch.arange(model.kv_caches[0].max_seq_len, device=x.device)
        mask = slots[None, :] <= input_pos[:, None]
    residual = None
    tables = model.pass_rope(t, input_pos)  # the stored ones but for a LongRoPE prefill past its training length
    for layer, cache in zip(model.model.layers, model.kv_caches):
        h, residual = add_rmsnorm(x, residual, layer.input_layernorm)
        attn = layer.self_attn
        qkv = attn.qkv_proj(h)
        if attn.q_norm is not None:  # Qwen3: per head, before rotary
            qkv = qk_norm(qkv, attn.q_norm, attn.k_norm, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim)
        kernels = _kernel_cache(cache)
        if kernels and t == 1 and FUSED_DECODE_ATTENTION:  # rotary, K/V store, attention: one launch
            y = decode_attention_qkv(qkv, *tables, input_pos, cache, cfg.n_heads)
        elif kernels:  # rotary + K/V store in one launch
            q = rope_store(qkv, *tables, input_pos, cache, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim)
            y = cache.attention(q, input_pos, mask)
        else:
            q, k, v = rope(qkv, tables, input_pos, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim)
            y = cache.attend(q, k, v, input_pos, mask)
        x = attn.o_proj(y.transpose(1, 2).reshape(b, t, -1))
        h, residual = add_rmsnorm(x, residual, layer.post_attention_layernorm)
        x = mlp(layer.mlp, h)
    h, _ = add_rmsnorm(x, residual, model.model.norm)
    return model.lm_head(h).float()


__all__ = ["add_rmsnorm", "decode_attention_qkv", "forward", "mlp", "qk_norm", "rope", "rope_store", "silu_mul",
           "store_kv", "supported"]
