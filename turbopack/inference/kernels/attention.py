"""Decode attention that reads the KV cache as stored: bf16, int8 or int4 codes (Triton).

One new query token per sequence attends over cache slots 0..pos (pos read from the device, so a
CUDA graph captured once replays at every position). Flash-decoding: the sequence is cut into
splits, one program per (batch, kv head, split) handles all GROUP query heads that share the kv
head (so each K/V byte is read once), and a second kernel merges the splits by their log-sum-exp.

K/V are never dequantized to memory. Scales and zeros are applied around the dot products:
  scores[g, n] = s_n * (q_g . code_n) + z_n * sum(q_g)           (the code matrix goes to the MMA)
  out[g, :]    = sum_n (p[g, n] * s_n) * code_n + sum_n p[g, n] * z_n
and int4 codes are used as two half-width matrices (even and odd d), the query and output split
the same way, so no nibble interleave is ever materialised. The query stays in its own 16-bit
dtype; the code matrices are converted to it in registers (exact: |code| <= 127).

``store_kv`` quantizes new K/V rows and writes codes, scales and zeros in one launch, with the
math of ``turbopack.inference.kv_quant`` (round half to even, bit-identical codes).
"""

from __future__ import annotations

import math

import torch

from turbopack.inference.kernels import pdl
from turbopack.inference.kernels.triton_env import interpreting, tl, triton

BLOCK_N = 128  # with num_warps=8: the best of the configs measured on the H100 (docs/benchmarks.md)
#: int codes -> 16-bit by bit patterns instead of int->float conversions (quarter rate); chosen by
#: benchmarks/bench_e2e.py's attention sweep on the H100
FAST_DEQUANT = False
TARGET_PROGRAMS = 264  # ~2 waves of the H100's 132 SMs
RNE_MAGIC = 12582912.0  # 1.5 * 2**23: (y + M) - M rounds |y| < 2**22 to nearest even in float32


def available(device: torch.device) -> bool:
    """Whether the kernels can run for tensors on ``device``."""
    if triton is None:
        return False
    return device.type == "cuda" or interpreting()


def supports_head_dim(d: int) -> bool:
    # tl.dot wants power-of-two extents >= 16; int4 splits D into two halves.
    return d >= 32 and d & (d - 1) == 0


if triton is not None:
    from turbopack.inference.kernels.epilogue import pdl_enter


    @triton.jit
    def _dot_t(a, b):
        return tl.dot(a, tl.trans(b))

    @triton.jit
    def _nibbles16(c, FAST: tl.constexpr, dt: tl.constexpr):
        """uint8 nibble codes (0..15) -> 16-bit dot operand. FAST (bf16): the bit pattern 0x4300|c
        reads as 128 + c, so integer ops replace the int->float conversion; the caller subtracts
        128 * (sum of the other operand) afterwards."""
        if FAST and dt == tl.float32:  # the same pattern in float32 (the interpreter's dot dtype)
            return ((c.to(tl.int32) << 16) | 0x43000000).to(tl.float32, bitcast=True)
        if FAST:
            return (c.to(tl.int16) | 0x4300).to(tl.bfloat16, bitcast=True)
        return c.to(dt)

    @triton.jit
    def _int8_16(c, FAST: tl.constexpr, dt: tl.constexpr):
        """int8 codes -> 16-bit dot operand; FAST: via the float32 bit pattern 2^23 + 128 + c."""
        if FAST:
            return ((c.to(tl.int32) + 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0).to(dt)
        return c.to(dt)

    @triton.jit
    def _decode_split_kernel(
        Q, K, V, KS, KZ, VS, VZ, POS, OUT, LSE,
        stride_qb, stride_qh,
        stride_kb, stride_kh, stride_kn,
        stride_sb, stride_sh,
        stride_ob, stride_oh, stride_os, stride_lb, stride_lh,
        n_kv_heads, split_len, qk_scale,
        GROUP: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
        BITS: tl.constexpr, DOT_F32: tl.constexpr, DIRECT: tl.constexpr, FAST: tl.constexpr, PDL: tl.constexpr,
    ):
        pdl_enter(PDL)
        pid, split = tl.program_id(0), tl.program_id(1)
        b, h = pid // n_kv_heads, pid % n_kv_heads
        seq_len = tl.load(POS).to(tl.int32) + 1
        start = split * split_len
        end = tl.minimum(start + split_len, seq_len)
        g = tl.arange(0, BLOCK_H)
        gmask = g < GROUP
        q_rows = Q + b * stride_qb + (h * GROUP + g)[:, None] * stride_qh
        k_base = K + b * stride_kb + h * stride_kh
        v_base = V + b * stride_kb + h * stride_kh
        s_off = b * stride_sb + h * stride_sh
        HALF: tl.constexpr = D // 2
        DC: tl.constexpr = HALF if BITS == 4 else D  # code columns per row
        dc = tl.arange(0, DC)
        if BITS == 4:
            qa = tl.load(q_rows + 2 * dc[None, :], mask=gmask[:, None], other=0.0)
            qb = tl.load(q_rows + 2 * dc[None, :] + 1, mask=gmask[:, None], other=0.0)
            q_sum = tl.sum(qa.to(tl.float32), 1) + tl.sum(qb.to(tl.float32), 1)
            acc_b = tl.zeros([BLOCK_H, DC], dtype=tl.float32)
            z_acc = tl.zeros([BLOCK_H], dtype=tl.float32)
        else:
            qa = tl.load(q_rows + dc[None, :], mask=gmask[:, None], other=0.0)
        dt = tl.float32 if DOT_F32 else qa.dtype
        qa = qa.to(dt)
        if BITS == 4:
            qb = qb.to(dt)
        acc_a = tl.zeros([BLOCK_H, DC], dtype=tl.float32)
        m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
        for n0 in range(start, end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            nmask = n < end
            kv_off = n[:, None] * stride_kn + dc[None, :]
            k = tl.load(k_base + kv_off, mask=nmask[:, None], other=0)
            if BITS == 16:
                s = _dot_t(qa, k.to(dt))
            elif BITS == 8:
                ks = tl.load(KS + s_off + n, mask=nmask, other=0.0)
                s = _dot_t(qa, _int8_16(k, FAST, dt)) * ks[None, :]
            else:
                ks = tl.load(KS + s_off + n, mask=nmask, other=0.0)
                kz = tl.load(KZ + s_off + n, mask=nmask, other=0.0)
                s = _dot_t(qa, _nibbles16(k & 15, FAST, dt)) + _dot_t(qb, _nibbles16(k >> 4, FAST, dt))
                if FAST:
                    s = s - 128.0 * q_sum[:, None]
                s = s * ks[None, :] + q_sum[:, None] * kz[None, :]
            s = tl.where(nmask[None, :], s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + kv_off, mask=nmask[:, None], other=0)
            if BITS == 16:
                acc_a = acc_a * alpha[:, None] + tl.dot(p.to(dt), v.to(dt))
            elif BITS == 8:
                vs = tl.load(VS + s_off + n, mask=nmask, other=0.0)
                acc_a = acc_a * alpha[:, None] + tl.dot((p * vs[None, :]).to(dt), _int8_16(v, FAST, dt))
            else:
                vs = tl.load(VS + s_off + n, mask=nmask, other=0.0)
                vz = tl.load(VZ + s_off + n, mask=nmask, other=0.0)
                pv = (p * vs[None, :]).to(dt)
                da = tl.dot(pv, _nibbles16(v & 15, FAST, dt))
                db = tl.dot(pv, _nibbles16(v >> 4, FAST, dt))
                if FAST:
                    pv_sum = 128.0 * tl.sum(pv.to(tl.float32), 1)
                    da = da - pv_sum[:, None]
                    db = db - pv_sum[:, None]
                acc_a = acc_a * alpha[:, None] + da
                acc_b = acc_b * alpha[:, None] + db
                z_acc = z_acc * alpha + tl.sum(p * vz[None, :], 1)
            m_i = m_new
        empty = l_i == 0.0  # a split past the sequence's end: weight 0 in the merge
        inv_l = 1.0 / tl.where(empty, 1.0, l_i)
        lse = tl.where(empty, float("-inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
        hq = h * GROUP + g
        if not DIRECT:  # DIRECT: one split, so this program's result is the answer (no merge)
            tl.store(LSE + b * stride_lb + hq * stride_lh + split, lse, mask=gmask)
        o_rows = OUT + b * stride_ob + hq[:, None] * stride_oh + split * stride_os
        if BITS == 4:
            oa = (acc_a + z_acc[:, None]) * inv_l[:, None]
            ob = (acc_b + z_acc[:, None]) * inv_l[:, None]
            tl.store(o_rows + 2 * dc[None, :], oa.to(OUT.dtype.element_ty), mask=gmask[:, None])
            tl.store(o_rows + 2 * dc[None, :] + 1, ob.to(OUT.dtype.element_ty), mask=gmask[:, None])
        else:
            tl.store(o_rows + dc[None, :], (acc_a * inv_l[:, None]).to(OUT.dtype.element_ty), mask=gmask[:, None])

    @triton.jit
    def _merge_kernel(PART, LSE, OUT, n_splits, D: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr):
        pdl_enter(PDL)
        row = tl.program_id(0)  # one (batch, query head)
        s = tl.arange(0, BLOCK_S)
        smask = s < n_splits
        lse = tl.load(LSE + row * n_splits + s, mask=smask, other=float("-inf"))
        m = tl.max(lse, 0)
        w = tl.where(smask, tl.exp2(lse - m), 0.0)
        d = tl.arange(0, D)
        part = tl.load(PART + (row * n_splits + s)[:, None] * D + d[None, :], mask=smask[:, None], other=0.0)
        out = tl.sum(part * w[:, None], 0) / tl.sum(w, 0)
        tl.store(OUT + row * D + d, out.to(OUT.dtype.element_ty))

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
        c_row = CODES + b * stride_cb + h * stride_ch + pos * stride_cn
        s_off = b * stride_sb + h * stride_sh + pos
        if BITS == 4:
            j = tl.arange(0, D // 2)
            xa = tl.load(x_row + 2 * j).to(tl.float32)
            xb = tl.load(x_row + 2 * j + 1).to(tl.float32)
        else:
            xa = tl.load(x_row + tl.arange(0, D)).to(tl.float32)
            xb = xa
        _quant_store(xa, xb, c_row, SCALE + s_off, ZERO + s_off, BITS)

    @triton.jit
    def _rotated(src, cs, sn, e, HALF: tl.constexpr):
        """Elements e of the rotary-embedded row: pairs (i, i + D/2), HF's rotate_half order."""
        lo = e < HALF
        partner = tl.where(lo, e + HALF, e - HALF)
        x = tl.load(src + e).to(tl.float32)
        xp = tl.load(src + partner).to(tl.float32)
        return x * tl.load(cs + e) + tl.where(lo, -xp, xp) * tl.load(sn + e)

    @triton.jit
    def _rope_store_kernel(QKV, COS, SIN, POS, Q, KC, KS, KZ, VC, VS, VZ,
                           T, n_q, n_kv, stride_row,
                           stride_cb, stride_ch, stride_cn, stride_sb, stride_sh,
                           D: tl.constexpr, BITS: tl.constexpr, PDL: tl.constexpr):
        """One (token, head) of the fused q|k|v row: q heads are rotated into Q [B, n_q, T, D];
        k heads rotated and v heads as they are go straight into the cache at their position."""
        pdl_enter(PDL)
        row, head = tl.program_id(0), tl.program_id(1)  # row = b * T + t
        b, t = row // T, row % T
        HALF: tl.constexpr = D // 2
        pos = tl.load(POS + t)
        src = QKV + row * stride_row + head * D
        cs, sn = COS + pos * D, SIN + pos * D
        if head < n_q:
            e = tl.arange(0, D)
            out = _rotated(src, cs, sn, e, HALF)
            tl.store(Q + ((b * n_q + head) * T + t) * D + e, out.to(Q.dtype.element_ty))
        else:
            is_k = head < n_q + n_kv
            h = tl.where(is_k, head - n_q, head - n_q - n_kv)
            c_off = b * stride_cb + h * stride_ch + pos * stride_cn
            s_off = b * stride_sb + h * stride_sh + pos
            if BITS == 4:
                j = tl.arange(0, HALF)
                if is_k:
                    xa = _rotated(src, cs, sn, 2 * j, HALF)
                    xb = _rotated(src, cs, sn, 2 * j + 1, HALF)
                    _quant_store(xa, xb, KC + c_off, KS + s_off, KZ + s_off, BITS)
                else:
                    xa = tl.load(src + 2 * j).to(tl.float32)
                    xb = tl.load(src + 2 * j + 1).to(tl.float32)
                    _quant_store(xa, xb, VC + c_off, VS + s_off, VZ + s_off, BITS)
            else:
                e = tl.arange(0, D)
                if is_k:
                    xa = _rotated(src, cs, sn, e, HALF)
                    _quant_store(xa, xa, KC + c_off, KS + s_off, KZ + s_off, BITS)
                else:
                    xa = tl.load(src + e).to(tl.float32)
                    _quant_store(xa, xa, VC + c_off, VS + s_off, VZ + s_off, BITS)


def n_splits_for(batch: int, n_kv_heads: int, max_seq: int, block_n: int | None = None) -> tuple[int, int]:
    """(split_len, n_splits): enough programs to fill the GPU, fixed for a given cache shape so a
    captured graph stays valid at every position."""
    block_n = block_n or BLOCK_N
    want = max(1, math.ceil(TARGET_PROGRAMS / (batch * n_kv_heads)))
    blocks = math.ceil(max_seq / block_n)
    per_split = max(1, math.ceil(blocks / want))
    split_len = per_split * block_n
    return split_len, math.ceil(max_seq / split_len)


def decode_attention(q: torch.Tensor, cache, input_pos: torch.Tensor, sm_scale: float | None = None, *,
                     block_n: int | None = None, num_warps: int = 8, num_stages: int = 2,
                     fast_dequant: bool | None = None) -> torch.Tensor:
    """q [B, Hq, 1, D] at position input_pos[0] over cache slots 0..pos -> [B, Hq, 1, D].

    ``cache`` offers ``parts("k"|"v") -> (codes, scale, zero)`` and ``bits`` (16, 8 or 4); codes are
    [B_max, H_kv, S, D or D/2] with the last dimension contiguous."""
    b, hq, t, d = q.shape
    assert t == 1, "decode_attention takes one query token per sequence"
    k, ks, kz = cache.parts("k")
    v, vs, vz = cache.parts("v")
    hkv, max_seq = k.shape[1], k.shape[2]
    group = hq // hkv
    bits = cache.bits
    q3 = q.reshape(b, hq, d)
    if q3.stride(-1) != 1:
        q3 = q3.contiguous()
    block_n = block_n or BLOCK_N
    fast = (FAST_DEQUANT if fast_dequant is None else fast_dequant) and bits != 16
    fast = fast and (bits == 8 or q.dtype == torch.bfloat16 or interpreting())
    split_len, n_splits = n_splits_for(b, hkv, max_seq, block_n)
    out = torch.empty(b, hq, 1, d, device=q.device, dtype=q.dtype)
    direct = n_splits == 1
    part = out if direct else torch.empty(b, hq, n_splits, d, device=q.device, dtype=torch.float32)
    lse = part if direct else torch.empty(b, hq, n_splits, device=q.device, dtype=torch.float32)
    dummy = ks if ks is not None else k
    ks, vs = (ks, vs) if ks is not None else (dummy, dummy)
    kz, vz = (kz, vz) if bits == 4 else (ks, vs)
    scale = (sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)) * 1.4426950408889634  # log2(e)
    _decode_split_kernel[(b * hkv, n_splits)](
        q3, k, v, ks, kz, vs, vz, input_pos, part, lse,
        q3.stride(0), q3.stride(1),
        k.stride(0), k.stride(1), k.stride(2),
        ks.stride(0) if bits != 16 else 0, ks.stride(1) if bits != 16 else 0,
        part.stride(0), part.stride(1), part.stride(2), lse.stride(0), lse.stride(1),
        hkv, split_len, scale,
        GROUP=group, BLOCK_H=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n, D=d, BITS=bits,
        DOT_F32=interpreting(),  # the CPU interpreter's tl.dot mis-reads bf16 operands
        DIRECT=direct, FAST=fast, num_warps=num_warps, num_stages=num_stages, **pdl.triton_args(q.device),
    )
    if not direct:
        _merge_kernel[(b * hq,)](part, lse, out, n_splits, D=d, BLOCK_S=max(2, triton.next_power_of_2(n_splits)),
                                 **pdl.triton_args(q.device))
    return out


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
    cos/sin: the model's float32 rotary tables [L, D]."""
    b, t, _ = qkv.shape
    flat = qkv.reshape(b * t, -1)
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    q = torch.empty(b, n_q, t, d, device=qkv.device, dtype=qkv.dtype)
    bits = cache.bits
    kc, ks, kz = cache.parts("k")
    vc, vs, vz = cache.parts("v")
    ks, vs = (ks, vs) if ks is not None else (kc, vc)
    kz, vz = (kz, vz) if bits == 4 else (ks, vs)
    _rope_store_kernel[(b * t, n_q + 2 * n_kv)](
        flat, cos, sin, input_pos, q, kc, ks, kz, vc, vs, vz, t, n_q, n_kv, flat.stride(0),
        kc.stride(0), kc.stride(1), kc.stride(2),
        ks.stride(0) if bits != 16 else 0, ks.stride(1) if bits != 16 else 0,
        D=d, BITS=bits, num_warps=1, **pdl.triton_args(qkv.device),
    )
    return q
