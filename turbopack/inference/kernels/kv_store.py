"""Writing K/V rows into the cache as it stores them: bf16, or int8 / int4 codes with their
scales (and int4 zeros), quantized with the math of ``turbopack.inference.kv_quant`` (round half
to even, bit-identical codes). Rotary embedding (HF's rotate_half order) is applied on the way,
to the first ROT channels of each head (all of them but under partial rotary, as Phi-4-mini: ROT
is the tables' width); the channels past ROT pass unrotated.

``store_kv`` writes given K or V rows; ``rope_store`` takes the fused q|k|v projection's output,
rotates q into a tensor and k into the cache, and stores v, in one launch (prefill). Decode steps
do the same inside the attention kernel (``attention.decode_attention_qkv``), which uses
``store_row`` and ``rotated`` from here.
"""

from __future__ import annotations

import torch

from turbopack.inference.kernels import pdl
from turbopack.inference.kernels.triton_env import tl, triton

RNE_MAGIC = 12582912.0  # 1.5 * 2**23: (y + M) - M rounds |y| < 2**22 to nearest even in float32


if triton is not None:
    from turbopack.inference.kernels.epilogue import pdl_enter

    RNE_MAGIC_C = tl.constexpr(RNE_MAGIC)

    @triton.jit
    def _rne(y):
        return (y + RNE_MAGIC_C) - RNE_MAGIC_C

    @triton.jit
    def _quant_store(xa, xb, c_row, s_ptr, z_ptr, BITS: tl.constexpr):
        """Write one K/V row (float32) as stored: BITS 16/8 take the row as xa; 4 takes its even
        (xa) and odd (xb) elements. Scale/zero go to s_ptr/z_ptr (the kv_quant math)."""
        if BITS == 16:
            tl.store(c_row + tl.arange(0, xa.shape[0]), xa.to(c_row.dtype.element_ty))
        elif BITS == 8:
            s = tl.max(tl.abs(xa), 0) / 127.0
            s = tl.where(s == 0.0, 1.0, s)
            q = tl.minimum(tl.maximum(_rne(xa / s), -127.0), 127.0)
            tl.store(c_row + tl.arange(0, xa.shape[0]), q.to(tl.int8))
            tl.store(s_ptr, s)
        else:
            z = tl.minimum(tl.min(xa, 0), tl.min(xb, 0))
            s = (tl.maximum(tl.max(xa, 0), tl.max(xb, 0)) - z) / 15.0
            s = tl.where(s == 0.0, 1.0, s)
            qa = tl.minimum(tl.maximum(_rne((xa - z) / s), 0.0), 15.0).to(tl.uint8)
            qb = tl.minimum(tl.maximum(_rne((xb - z) / s), 0.0), 15.0).to(tl.uint8)
            tl.store(c_row + tl.arange(0, xa.shape[0]), qa | (qb << 4))
            tl.store(s_ptr, s)
            tl.store(z_ptr, z)

    @triton.jit
    def rotated(src, cs, sn, e, mask, HALF: tl.constexpr):
        """Elements e of the rotary-embedded row(s) at src, float32: pairs (i, i + HALF) for
        i < HALF (HF's rotate_half order over the 2 HALF rotated channels); elements from 2 HALF on
        come back as they are (cos 1, sin 0: exact). ``src`` may be a column of row pointers and
        ``e`` a row of offsets; cs/sn point at the position's table row (2 HALF wide)."""
        turns = e < 2 * HALF
        lo = e < HALF
        x = tl.load(src + e, mask=mask, other=0.0).to(tl.float32)
        xp = tl.load(src + tl.where(lo, e + HALF, e - HALF), mask=mask & turns, other=0.0).to(tl.float32)
        c = tl.load(cs + e, mask=turns, other=1.0)
        s = tl.load(sn + e, mask=turns, other=0.0)
        return x * c + tl.where(lo, -xp, xp) * s

    @triton.jit
    def store_row(src, cs, sn, c_row, s_ptr, z_ptr, ROTATE: tl.constexpr, BITS: tl.constexpr, D: tl.constexpr,
                  ROT: tl.constexpr):
        """One K (ROTATE: its first ROT channels) or V row of D elements at src -> the cache row
        c_row (+ scale, zero)."""
        HALF: tl.constexpr = ROT // 2  # rotary pairs (i, i + HALF)
        if BITS == 4:  # codes hold (even, odd) element pairs: quantize the two halves together
            j = tl.arange(0, D // 2)
            if ROTATE:
                xa = rotated(src, cs, sn, 2 * j, j >= 0, HALF)
                xb = rotated(src, cs, sn, 2 * j + 1, j >= 0, HALF)
            else:
                xa = tl.load(src + 2 * j).to(tl.float32)
                xb = tl.load(src + 2 * j + 1).to(tl.float32)
        else:
            e = tl.arange(0, D)
            if ROTATE:
                xa = rotated(src, cs, sn, e, e >= 0, HALF)
            else:
                xa = tl.load(src + e).to(tl.float32)
            xb = xa
        _quant_store(xa, xb, c_row, s_ptr, z_ptr, BITS)

    @triton.jit
    def _store_kv_kernel(X, POS, CODES, SCALE, ZERO,
                         stride_xb, stride_xh, stride_xt,
                         stride_cb, stride_ch, stride_cn,
                         stride_sb, stride_sh,
                         n_heads, T, D: tl.constexpr, BITS: tl.constexpr, PDL: tl.constexpr):
        pdl_enter(PDL)
        pid = tl.program_id(0)  # one (batch, head, token)
        t = pid % T
        h = (pid // T) % n_heads
        b = pid // (T * n_heads)
        pos = tl.load(POS + t)
        x_row = X + b * stride_xb + h * stride_xh + t * stride_xt
        s_off = b * stride_sb + h * stride_sh + pos
        store_row(x_row, X, X, CODES + b * stride_cb + h * stride_ch + pos * stride_cn, SCALE + s_off, ZERO + s_off,
                  False, BITS, D, D)

    @triton.jit
    def _rope_store_kernel(QKV, COS, SIN, POS, Q, KC, KS, KZ, VC, VS, VZ,
                           T, n_q, n_kv, stride_row,
                           stride_cb, stride_ch, stride_cn, stride_sb, stride_sh,
                           D: tl.constexpr, ROT: tl.constexpr, BITS: tl.constexpr, PDL: tl.constexpr):
        """One (token, head) of the fused q|k|v row: q heads are rotated into Q [B, n_q, T, D];
        k heads rotated and v heads as they are go straight into the cache at their position."""
        pdl_enter(PDL)
        row, head = tl.program_id(0), tl.program_id(1)  # row = b * T + t
        b, t = row // T, row % T
        pos = tl.load(POS + t)
        src = QKV + row * stride_row + head * D
        cs, sn = COS + pos * ROT, SIN + pos * ROT
        if head < n_q:
            e = tl.arange(0, D)
            out = rotated(src, cs, sn, e, e >= 0, ROT // 2)
            tl.store(Q + ((b * n_q + head) * T + t) * D + e, out.to(Q.dtype.element_ty))
        elif head < n_q + n_kv:
            h = head - n_q
            s_off = b * stride_sb + h * stride_sh + pos
            store_row(src, cs, sn, KC + b * stride_cb + h * stride_ch + pos * stride_cn, KS + s_off, KZ + s_off,
                      True, BITS, D, ROT)
        else:
            h = head - n_q - n_kv
            s_off = b * stride_sb + h * stride_sh + pos
            store_row(src, cs, sn, VC + b * stride_cb + h * stride_ch + pos * stride_cn, VS + s_off, VZ + s_off,
                      False, BITS, D, ROT)


def cache_args(cache) -> tuple:
    """(k codes, k scale, k zero, v codes, v scale, v zero, scale strides) with dummies where the
    cache stores none (16-bit: no scales; 8-bit: no zeros), as the kernels take them."""
    bits = cache.bits
    kc, ks, kz = cache.parts("k")
    vc, vs, vz = cache.parts("v")
    ks, vs = (ks, vs) if ks is not None else (kc, vc)
    kz, vz = (kz, vz) if bits == 4 else (ks, vs)
    s_strides = (ks.stride(0), ks.stride(1)) if bits != 16 else (0, 0)
    return kc, ks, kz, vc, vs, vz, s_strides


def store_kv(x: torch.Tensor, input_pos: torch.Tensor, codes: torch.Tensor, scale, zero, bits: int) -> None:
    """Quantize x [B, H, T, D] (rows along D) and write it at slots input_pos [T] of the cache."""
    b, h, t, d = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    scale = scale if scale is not None else codes
    zero = zero if bits == 4 else scale
    _store_kv_kernel[(b * h * t,)](
        x, input_pos, codes, scale, zero,
        x.stride(0), x.stride(1), x.stride(2),
        codes.stride(0), codes.stride(1), codes.stride(2),
        scale.stride(0) if bits != 16 else 0, scale.stride(1) if bits != 16 else 0,
        h, t, D=d, BITS=bits, **pdl.triton_args(x.device),
    )


def rope_store(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, input_pos: torch.Tensor, cache,
               n_q: int, n_kv: int, d: int) -> torch.Tensor:
    """qkv [B, T, (n_q + 2 n_kv) D] (the fused projection's output) -> rotated q [B, n_q, T, D];
    rotated k and v are written into ``cache`` at input_pos (quantized as the cache stores them).
    cos/sin: the model's float32 rotary tables [L, rotary channels]."""
    b, t, _ = qkv.shape
    flat = qkv.reshape(b * t, -1)
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    q = torch.empty(b, n_q, t, d, device=qkv.device, dtype=qkv.dtype)
    kc, ks, kz, vc, vs, vz, s_strides = cache_args(cache)
    _rope_store_kernel[(b * t, n_q + 2 * n_kv)](
        flat, cos, sin, input_pos, q, kc, ks, kz, vc, vs, vz, t, n_q, n_kv, flat.stride(0),
        kc.stride(0), kc.stride(1), kc.stride(2), *s_strides,
        D=d, ROT=cos.shape[-1], BITS=cache.bits, num_warps=1, **pdl.triton_args(qkv.device),
    )
    return q
