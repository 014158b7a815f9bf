"""The decode path's glue kernels (Triton): norms with the residual add, per-head q/k norms, the
gated activation, rotary. Each replaces a chain of small torch ops of the reference model
(``inference.model``, ``inference.norms``) with one launch that rounds where the reference rounds:

- RMSNorm, Llama's style: weight * round(x_hat); Gemma's: round(x_hat * (1 + weight)) in fp32.
- ``add_rmsnorm``: the residual add and the next norm in one pass; with ``pre`` (Gemma's sandwich
  norms) the sublayer output is normed first, then added, then normed again.
- ``act_mul``: round(act(gate)) * up, act SiLU or GeLU's tanh form (Gemma).
- ``rope``: q and k rotated to [B, H, T, D] (``kv_store.rotated``: partial rotary included).

They run on the GPU or, for tests, under Triton's CPU interpreter.
"""

from __future__ import annotations

import torch

from turbopack.inference.config import Activation, NormStyle
from turbopack.inference.kernels import pdl
from turbopack.inference.kernels.triton_env import tl, triton

#: which norms' weights are offsets from 1 (Gemma: stored centred on 0)
UNIT_OFFSET = {NormStyle.LLAMA: False, NormStyle.GEMMA: True}
#: activation -> the act_mul kernel's GELU switch
GELU = {Activation.SILU: False, Activation.GELU_TANH: True}

if triton is not None:
    from turbopack.inference.kernels.epilogue import pdl_enter
    from turbopack.inference.kernels.kv_store import rotated

    @triton.jit
    def _normed(xf, W, c, m, n, eps, OFFSET: tl.constexpr, dt: tl.constexpr):
        """RMSNorm of the fp32 row xf (n valid elements), weights at W: Llama's (x_hat rounded to
        dt, times w) or, OFFSET, Gemma's (x_hat * (1 + w) in fp32); the caller rounds the result."""
        inv = 1.0 / tl.sqrt(tl.sum(xf * xf, 0) / n + eps)
        w = tl.load(W + c, mask=m, other=0.0).to(tl.float32)
        if OFFSET:
            return xf * inv * (1.0 + w)
        return (xf * inv).to(dt).to(tl.float32) * w

    @triton.jit
    def _add_rmsnorm_kernel(X, R, W, PW, OUT, R_OUT, n, eps, HAS_RES: tl.constexpr, PRE: tl.constexpr,
                            OFFSET: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
        pdl_enter(PDL)
        row = tl.program_id(0)
        c = tl.arange(0, BLOCK)
        m = c < n
        dt = X.dtype.element_ty
        x = tl.load(X + row * n + c, mask=m, other=0.0)
        if PRE:  # Gemma's post-attention / post-feedforward norm of the sublayer output
            x = _normed(x.to(tl.float32), PW, c, m, n, eps, OFFSET, dt).to(dt)
        if HAS_RES:
            x = (x.to(tl.float32) + tl.load(R + row * n + c, mask=m, other=0.0).to(tl.float32)).to(dt)
            tl.store(R_OUT + row * n + c, x, mask=m)
        y = _normed(x.to(tl.float32), W, c, m, n, eps, OFFSET, dt)
        tl.store(OUT + row * n + c, y.to(OUT.dtype.element_ty), mask=m)

    @triton.jit
    def _qk_norm_kernel(QKV, QW, KW, stride_row, n_q, eps, D, OFFSET: tl.constexpr, BLOCK: tl.constexpr,
                        PDL: tl.constexpr):
        """One (token, head) of q or k in place: RMSNorm over the head's D channels (Qwen3's and
        Gemma 3's q_norm / k_norm), before rotary reads it."""
        pdl_enter(PDL)
        row, head = tl.program_id(0), tl.program_id(1)
        c = tl.arange(0, BLOCK)
        m = c < D
        ptr = QKV + row * stride_row + head * D + c
        xf = tl.load(ptr, mask=m, other=0.0).to(tl.float32)
        y = _normed(xf, QW if head < n_q else KW, c, m, D, eps, OFFSET, QKV.dtype.element_ty)
        tl.store(ptr, y.to(QKV.dtype.element_ty), mask=m)

    @triton.jit
    def _act_mul_kernel(GU, OUT, n, GELU: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
        pdl_enter(PDL)
        row, blk = tl.program_id(0), tl.program_id(1)
        c = blk * BLOCK + tl.arange(0, BLOCK)
        m = c < n
        g = tl.load(GU + row * 2 * n + c, mask=m, other=0.0).to(tl.float32)
        u = tl.load(GU + row * 2 * n + n + c, mask=m, other=0.0).to(tl.float32)
        if GELU:  # 0.5 g (1 + tanh(y)), y = sqrt(2/pi) (g + 0.044715 g^3), is g * sigmoid(2 y)
            y = 0.7978845608028654 * (g + 0.044715 * g * g * g)
            a = g / (1.0 + tl.exp(-2.0 * y))
        else:
            a = g / (1.0 + tl.exp(-g))
        a = a.to(OUT.dtype.element_ty).to(tl.float32)
        tl.store(OUT + row * n + c, (a * u).to(OUT.dtype.element_ty), mask=m)

    @triton.jit
    def _rope_kernel(QKV, COS, SIN, POS, Q, K, T, n_q, n_kv, stride_row, D: tl.constexpr, ROT: tl.constexpr,
                     BLOCK: tl.constexpr):
        """One (token, head) of q or k: its first ROT channels rotated by the position's angle,
        written [B, H, T, D] (any D: the attention kernels' caches take powers of two, this one
        serves the others, as Phi-3's 96)."""
        row, head = tl.program_id(0), tl.program_id(1)  # row = b * T + t
        b, t = row // T, row % T
        pos = tl.load(POS + t)
        e = tl.arange(0, BLOCK)
        x = rotated(QKV + row * stride_row + head * D, COS + pos * ROT, SIN + pos * ROT, e, e < D, ROT // 2)
        if head < n_q:
            dst = Q + ((b * n_q + head) * T + t) * D
        else:
            dst = K + ((b * n_kv + head - n_q) * T + t) * D
        tl.store(dst + e, x.to(Q.dtype.element_ty), mask=e < D)


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor | None, norm, pre=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(s + residual), s + residual) with s = x, or pre(x) where a ``pre`` norm is given
    (it comes after a sublayer: a residual too); residual None means 0 (the first layer). Norms:
    ``inference.norms`` modules of one style."""
    assert pre is None or residual is not None, "a pre-norm follows a sublayer: pass the residual"
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    out = torch.empty_like(x2)
    r_out = torch.empty_like(x2) if residual is not None else x2
    r = residual.reshape(-1, n) if residual is not None else x2
    _add_rmsnorm_kernel[(x2.shape[0],)](x2, r, norm.weight, (pre or norm).weight, out, r_out, n, norm.eps,
                                        HAS_RES=residual is not None, PRE=pre is not None,
                                        OFFSET=UNIT_OFFSET[norm.style], BLOCK=triton.next_power_of_2(n),
                                        num_warps=8 if n >= 4096 else 4, **pdl.triton_args(x.device))
    return out.view(x.shape), r_out.view(x.shape)


def qk_norm(qkv: torch.Tensor, q_norm, k_norm, n_q: int, n_kv: int, d: int) -> torch.Tensor:
    """q_norm / k_norm on each head of q and k inside qkv [B, T, (n_q + 2 n_kv) D], in place."""
    flat = qkv.reshape(-1, qkv.shape[-1])
    _qk_norm_kernel[(flat.shape[0], n_q + n_kv)](flat, q_norm.weight, k_norm.weight, flat.stride(0), n_q, q_norm.eps,
                                                d, OFFSET=UNIT_OFFSET[q_norm.style], BLOCK=triton.next_power_of_2(d),
                                                num_warps=1, **pdl.triton_args(qkv.device))
    return qkv


def act_mul(gu: torch.Tensor, activation: Activation) -> torch.Tensor:
    """act(gate) * up of the fused gate|up output gu [..., 2 n] -> [..., n]."""
    n = gu.shape[-1] // 2
    g2 = gu.reshape(-1, 2 * n)
    out = torch.empty(g2.shape[0], n, device=gu.device, dtype=gu.dtype)
    block = min(2048, triton.next_power_of_2(n))
    _act_mul_kernel[(g2.shape[0], triton.cdiv(n, block))](g2, out, n, GELU=GELU[activation], BLOCK=block,
                                                          num_warps=4, **pdl.triton_args(gu.device))
    return out.view(*gu.shape[:-1], n)


def rope(qkv: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor], input_pos: torch.Tensor, n_q: int, n_kv: int,
         d: int):
    """qkv [B, T, (n_q + 2 n_kv) D] -> q [B, n_q, T, D], k [B, n_kv, T, D] rotated by the cos/sin
    ``tables`` (rows by position; their width: the rotated channels), v (a view)."""
    b, t, _ = qkv.shape
    q = torch.empty(b, n_q, t, d, device=qkv.device, dtype=qkv.dtype)
    k = torch.empty(b, n_kv, t, d, device=qkv.device, dtype=qkv.dtype)
    flat = qkv.reshape(b * t, -1)
    _rope_kernel[(b * t, n_q + n_kv)](flat, *tables, input_pos, q, k, t, n_q, n_kv, flat.stride(0), D=d,
                                      ROT=tables[0].shape[-1], BLOCK=triton.next_power_of_2(d), num_warps=1)
    v = qkv[..., (n_q + n_kv) * d:].view(b, t, n_kv, d).transpose(1, 2)
    return q, k, v
