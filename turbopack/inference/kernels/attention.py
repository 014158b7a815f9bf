"""Decode attention that reads the KV cache as stored: bf16, int8 or int4 codes (Triton).

One new query token per sequence attends over cache slots 0..pos (pos read from the device, so a
CUDA graph captured once replays at every position). Flash-decoding: the sequence is cut into
splits, one program per (batch, kv head, split) handles all GROUP query heads that share the kv
head (so each K/V byte is read once). The splits are merged by their log-sum-exp in the same
launch: each program stores its partial result and counts itself in on a per-(batch, kv head)
counter, and the program that completes the count merges all splits in split order (the same
bits whichever program arrives last) and resets the counter (``epilogue.finish``'s scheme). The
grid is fixed by the cache's length (a graph is captured once for every position), the splits'
length is not: at position pos each split takes (pos + 1) / n_splits keys in whole blocks, at
least MIN_SPLIT_LEN, the programs past the last live split leave at once, the count is of the
live ones, and while one split is live it stores the answer itself (no partial, counter or merge:
a short sequence's attention is one program per kv head).

``decode_attention_qkv`` also takes the place of the rotary + K/V store launch: it reads q from
the fused q|k|v projection's output and rotates it, and the program whose split holds the new
position rotates and stores that token's K and V (``kv_store.store_row``) before its loop reads
them back. A decode layer's attention is one launch where it was three (rotary + store, split,
merge). Under partial rotary (the tables narrower than D) only the first channels turn.

Every family's attention is this one kernel: the cache carries the layer's scale (Gemma's
query_pre_attn_scalar), soft-cap (Gemma 2: cap * tanh(s / cap) before the softmax) and sliding
window (the loop starts at slot pos - window + 1), as ``Transformer.setup_caches`` recorded them.

K/V are never dequantized to memory. Scales and zeros are applied around the dot products:
  scores[g, n] = s_n * (q_g . code_n) + z_n * sum(q_g)           (the code matrix goes to the MMA)
  out[g, :]    = sum_n (p[g, n] * s_n) * code_n + sum_n p[g, n] * z_n
and int4 codes are used as two half-width matrices (even and odd d), the query and output split
the same way, so no nibble interleave is ever materialised. The query stays in its own 16-bit
dtype; the code matrices are converted to it in registers (exact: |code| <= 127).
"""

from __future__ import annotations

import math

import torch

from turbopack.inference.kernels import pdl
from turbopack.inference.kernels.epilogue import counters
from turbopack.inference.kernels.kv_store import cache_args
from turbopack.inference.kernels.triton_env import interpreting, tl, triton

BLOCK_N = 128  # with num_warps=8: the best of the configs measured on the H100 (docs/benchmarks.md)
#: int codes -> 16-bit by bit patterns instead of int->float conversions (quarter rate); chosen by
#: benchmarks/bench_e2e.py's attention sweep on the H100
FAST_DEQUANT = False
NUM_WARPS, NUM_STAGES = 8, 2
TARGET_PROGRAMS = 264  # ~2 waves of the H100's 132 SMs
#: the splits follow the position (below), those past it leave at once and one live split stores its
#: answer itself; False: splits of a fixed length, every one runs and merges, as before run 19 (the A/B)
LIVE_SPLITS = True
#: the shortest split (keys; rounded up to BLOCK_N) at a position: a sequence shorter than this is one
#: program per kv head, with no partials, counter or merge (what the merge's chain costs, ~4 µs a
#: layer at 2 splits on the H100, run 19, is more than one program reading a few more blocks)
MIN_SPLIT_LEN = 256
LOG2E = 1.4426950408889634  # the kernel's softmax runs on exp2


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
    from turbopack.inference.kernels.kv_store import rotated, store_row


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
    def _q_part(rows, e, cs, sn, mask, ROPE: tl.constexpr, HALF: tl.constexpr):
        """Query elements e of rows (pointers [BLOCK_H, 1]) in the 16-bit dtype; ROPE: rotated
        first, as ``kv_store.rope_store`` does (fp32, rounded once)."""
        if ROPE:
            x = rotated(rows, cs, sn, e, mask, HALF).to(rows.dtype.element_ty)
        else:
            x = tl.load(rows + e, mask=mask, other=0.0)
        return x

    @triton.jit
    def _merge(PART, LSE, OUT, row, gmask, n_splits, live, BLOCK_H: tl.constexpr, D: tl.constexpr):
        """OUT rows = the live splits' partial outputs weighted by exp2(lse - max), summed in split
        order (run by the last program of a (batch, kv head); ``.cg``: read at L2, where the others'
        stores landed). ``n_splits``: the partials' row stride."""
        m = tl.full([BLOCK_H], float("-inf"), tl.float32)
        for s in range(0, live):
            m = tl.maximum(m, tl.load(LSE + row * n_splits + s, mask=gmask, other=float("-inf"), cache_modifier=".cg"))
        m = tl.where(gmask, m, 0.0)
        d = tl.arange(0, D)
        acc = tl.zeros([BLOCK_H, D], dtype=tl.float32)
        w_sum = tl.zeros([BLOCK_H], dtype=tl.float32)
        for s in range(0, live):
            w = tl.exp2(tl.load(LSE + row * n_splits + s, mask=gmask, other=float("-inf"), cache_modifier=".cg") - m)
            part = tl.load(PART + (row * n_splits + s)[:, None] * D + d[None, :], mask=gmask[:, None], other=0.0,
                           cache_modifier=".cg")
            acc += w[:, None] * part
            w_sum += w
        out = acc / tl.where(gmask, w_sum, 1.0)[:, None]
        tl.store(OUT + row[:, None] * D + d[None, :], out.to(OUT.dtype.element_ty), mask=gmask[:, None])

    @triton.jit
    def _scores(qa, qb, q_sum, k, ks, kz, BITS: tl.constexpr, FAST: tl.constexpr, dt: tl.constexpr):
        """q . k for a block of keys (codes k; ks/kz their scales and zeros: 8 and 4 bits)."""
        if BITS == 16:
            s = _dot_t(qa, k.to(dt))
        elif BITS == 8:
            s = _dot_t(qa, _int8_16(k, FAST, dt)) * ks[None, :]
        else:
            s = _dot_t(qa, _nibbles16(k & 15, FAST, dt)) + _dot_t(qb, _nibbles16(k >> 4, FAST, dt))
            if FAST:
                s = s - 128.0 * q_sum[:, None]
            s = s * ks[None, :] + q_sum[:, None] * kz[None, :]
        return s

    @triton.jit
    def _add_pv(acc_a, acc_b, z_acc, alpha, p, v, vs, vz, BITS: tl.constexpr, FAST: tl.constexpr,
                dt: tl.constexpr):
        """The running output rescaled by alpha plus p . v for a block of values (int4: the even
        and odd d in acc_a / acc_b, the zeros' share in z_acc)."""
        if BITS == 16:
            acc_a = acc_a * alpha[:, None] + tl.dot(p.to(dt), v.to(dt))
        elif BITS == 8:
            acc_a = acc_a * alpha[:, None] + tl.dot((p * vs[None, :]).to(dt), _int8_16(v, FAST, dt))
        else:
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
        return acc_a, acc_b, z_acc

    @triton.jit
    def _store_rows(dst, acc_a, acc_b, z_acc, inv_l, dc, gmask, BITS: tl.constexpr):
        """Rows dst [BLOCK_H, 1] (pointers) = the normalized output (int4: even and odd d interleaved)."""
        if BITS == 4:
            oa = (acc_a + z_acc[:, None]) * inv_l[:, None]
            ob = (acc_b + z_acc[:, None]) * inv_l[:, None]
            tl.store(dst + 2 * dc[None, :], oa.to(dst.dtype.element_ty), mask=gmask[:, None])
            tl.store(dst + 2 * dc[None, :] + 1, ob.to(dst.dtype.element_ty), mask=gmask[:, None])
        else:
            tl.store(dst + dc[None, :], (acc_a * inv_l[:, None]).to(dst.dtype.element_ty), mask=gmask[:, None])

    @triton.jit
    def _store_result(acc_a, acc_b, z_acc, m_i, l_i, OUT, PART, LSE, CNT, pid, split, n_splits, live, row, gmask,
                      BLOCK_H: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, DIRECT: tl.constexpr):
        """The split's normalized output and log-sum-exp, then its arrival at the (batch, kv head)
        counter; the last of the ``live`` splits merges and re-zeroes it. One live split (DIRECT, or
        a position in the first split): the answer itself, no partial, counter or merge."""
        DC: tl.constexpr = D // 2 if BITS == 4 else D
        dc = tl.arange(0, DC)
        empty = l_i == 0.0  # a split wholly before a sliding window: weight 0 in the merge
        inv_l = 1.0 / tl.where(empty, 1.0, l_i)
        if DIRECT:
            _store_rows(OUT + row[:, None] * D, acc_a, acc_b, z_acc, inv_l, dc, gmask, BITS)
        elif live == 1:
            _store_rows(OUT + row[:, None] * D, acc_a, acc_b, z_acc, inv_l, dc, gmask, BITS)
        else:
            _store_rows(PART + (row * n_splits + split)[:, None] * D, acc_a, acc_b, z_acc, inv_l, dc, gmask, BITS)
            lse = tl.where(empty, float("-inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
            tl.store(LSE + row * n_splits + split, lse, mask=gmask)
        if not DIRECT:
            if live > 1:
                tl.debug_barrier()  # every thread's partial is stored before this split counts as done
                if tl.atomic_add(CNT + pid, 1) == live - 1:
                    _merge(PART, LSE, OUT, row, gmask, n_splits, live, BLOCK_H, D)
                    tl.atomic_xchg(CNT + pid, 0)

    @triton.jit
    def _decode_kernel(
        Q, COS, SIN, K, V, KS, KZ, VS, VZ, POS, OUT, PART, LSE, CNT,
        stride_qb, stride_qh,
        stride_kb, stride_kh, stride_kn,
        stride_sb, stride_sh,
        n_kv_heads, n_splits, split_len, split_min, window, qk_scale, cap_out,
        GROUP: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
        BITS: tl.constexpr, DOT_F32: tl.constexpr, DIRECT: tl.constexpr, FAST: tl.constexpr,
        ROPE: tl.constexpr, ROT: tl.constexpr, CAP: tl.constexpr, LIVE: tl.constexpr, PDL: tl.constexpr,
    ):
        pdl_enter(PDL)
        pid, split = tl.program_id(0), tl.program_id(1)
        b, h = pid // n_kv_heads, pid % n_kv_heads
        pos = tl.load(POS).to(tl.int32)
        # the splits past pos's hold nothing yet: they leave at once, and the merge counts the live ones
        # (a graph captured for max_seq runs at every position: few live splits early on)
        if LIVE:  # (pos + 1) / n_splits keys a split, whole blocks, at least split_min
            split_len = tl.maximum(tl.cdiv(tl.cdiv(pos + 1, n_splits), BLOCK_N) * BLOCK_N, split_min)
            live = pos // split_len + 1
        else:
            live = n_splits
        if split < live:
            start = split * split_len
            end = tl.minimum(start + split_len, pos + 1)
            k_base = K + b * stride_kb + h * stride_kh
            v_base = V + b * stride_kb + h * stride_kh
            s_off = b * stride_sb + h * stride_sh
            HALF: tl.constexpr = ROT // 2
            cs, sn = COS + pos * ROT, SIN + pos * ROT
            if ROPE:
                if pos // split_len == split:  # the new token's slot is in this split: rotate and store its K, V
                    kv_row = Q + b * stride_qb + (n_kv_heads * GROUP + h) * stride_qh
                    store_row(kv_row, cs, sn, k_base + pos * stride_kn, KS + s_off + pos, KZ + s_off + pos, True,
                              BITS, D, ROT)
                    kv_row += n_kv_heads * stride_qh
                    store_row(kv_row, cs, sn, v_base + pos * stride_kn, VS + s_off + pos, VZ + s_off + pos, False,
                              BITS, D, ROT)
                tl.debug_barrier()  # the whole program sees those stores before its loop reads the slot
            g = tl.arange(0, BLOCK_H)
            gmask = g < GROUP
            q_rows = Q + b * stride_qb + (h * GROUP + g)[:, None] * stride_qh
            DC: tl.constexpr = D // 2 if BITS == 4 else D  # code columns per row
            dc = tl.arange(0, DC)
            if BITS == 4:
                qa = _q_part(q_rows, 2 * dc[None, :], cs, sn, gmask[:, None], ROPE, HALF)
                qb = _q_part(q_rows, 2 * dc[None, :] + 1, cs, sn, gmask[:, None], ROPE, HALF)
                q_sum = tl.sum(qa.to(tl.float32), 1) + tl.sum(qb.to(tl.float32), 1)
            else:
                qa = _q_part(q_rows, dc[None, :], cs, sn, gmask[:, None], ROPE, HALF)
                qb, q_sum = qa, tl.zeros([BLOCK_H], dtype=tl.float32)  # (read by the int4 form only)
            dt = tl.float32 if DOT_F32 else qa.dtype
            qa, qb = qa.to(dt), qb.to(dt)
            acc_a = tl.zeros([BLOCK_H, DC], dtype=tl.float32)
            acc_b = tl.zeros([BLOCK_H, DC], dtype=tl.float32)
            z_acc = tl.zeros([BLOCK_H], dtype=tl.float32)
            m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
            l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
            # a sliding-window layer sees slots pos - window + 1 .. pos (HF: kv > q - window); a split
            # wholly before them runs no iteration and merges with weight 0
            for n0 in range(tl.maximum(start, pos + 1 - window), end, BLOCK_N):
                n = n0 + tl.arange(0, BLOCK_N)
                nmask = n < end
                kv_off = n[:, None] * stride_kn + dc[None, :]
                k = tl.load(k_base + kv_off, mask=nmask[:, None], other=0)
                ks = tl.load(KS + s_off + n, mask=nmask & (BITS != 16), other=0.0)
                kz = tl.load(KZ + s_off + n, mask=nmask & (BITS == 4), other=0.0)
                s = _scores(qa, qb, q_sum, k, ks, kz, BITS, FAST, dt)
                if CAP:  # Gemma 2: cap * tanh(scores / cap), in log2 units (qk_scale = scale / cap)
                    s = (2.0 / (1.0 + tl.exp(-2.0 * s * qk_scale)) - 1.0) * cap_out
                else:
                    s = s * qk_scale
                s = tl.where(nmask[None, :], s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                alpha = tl.exp2(m_i - m_new)
                p = tl.exp2(s - m_new[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                v = tl.load(v_base + kv_off, mask=nmask[:, None], other=0)
                vs = tl.load(VS + s_off + n, mask=nmask & (BITS != 16), other=0.0)
                vz = tl.load(VZ + s_off + n, mask=nmask & (BITS == 4), other=0.0)
                acc_a, acc_b, z_acc = _add_pv(acc_a, acc_b, z_acc, alpha, p, v, vs, vz, BITS, FAST, dt)
                m_i = m_new
            row = (b * n_kv_heads + h) * GROUP + g  # rows (batch, query head) of [B * Hq, ...]
            _store_result(acc_a, acc_b, z_acc, m_i, l_i, OUT, PART, LSE, CNT, pid, split, n_splits, live, row, gmask,
                          BLOCK_H, D, BITS, DIRECT)


def default_block_n(d: int, bits: int) -> int:
    """BLOCK_N for heads of D: the K/V tiles live in registers, and ptxas (sm_90, 8 warps) spills
    past BLOCK_N x D = 128 x 128 (at D = 256: 255 registers + 40 bytes of stack at 128, none at
    64); int8 at D = 256 spills at 64 too (216 bytes), not at 32. CI compiles these and checks."""
    block_n = BLOCK_N * 128 // max(d, 128)
    return block_n // 2 if bits == 8 and d > 128 else block_n


def n_splits_for(batch: int, n_kv_heads: int, max_seq: int, block_n: int | None = None) -> tuple[int, int]:
    """(split_len, n_splits): enough programs to fill the GPU, fixed for a given cache shape so a
    captured graph stays valid at every position."""
    block_n = block_n or BLOCK_N
    want = max(1, math.ceil(TARGET_PROGRAMS / (batch * n_kv_heads)))
    blocks = math.ceil(max_seq / block_n)
    per_split = max(1, math.ceil(blocks / want))
    split_len = per_split * block_n
    return split_len, math.ceil(max_seq / split_len)


def decode_attention(q: torch.Tensor, cache, input_pos: torch.Tensor, **knobs) -> torch.Tensor:
    """q [B, Hq, 1, D] at position input_pos[0] over cache slots 0..pos -> [B, Hq, 1, D].

    ``cache`` offers ``parts("k"|"v") -> (codes, scale, zero)`` and ``bits`` (16, 8 or 4); codes are
    [B_max, H_kv, S, D or D/2] with the last dimension contiguous. The attention is the layer's, as
    ``Transformer.setup_caches`` records it on the cache: ``scale`` (None: 1/sqrt(D)), ``softcap``
    (Gemma 2) and ``window`` (a sliding-window layer; None: every slot). ``knobs``: ``block_n``,
    ``num_warps``, ``num_stages``, ``fast_dequant`` (benchmark sweeps)."""
    b, hq, t, d = q.shape
    assert t == 1, "decode_attention takes one query token per sequence"
    q3 = q.reshape(b, hq, d)
    if q3.stride(-1) != 1:
        q3 = q3.contiguous()
    return _attend(q3, (q3.stride(0), q3.stride(1)), None, cache, input_pos, hq, **knobs)


def decode_attention_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, input_pos: torch.Tensor, cache,
                         n_q: int, **knobs) -> torch.Tensor:
    """One decode step's attention from the fused projection's output qkv [B, 1, (n_q + 2 n_kv) D]
    -> [B, n_q, 1, D]: q rotated, the new token's K (rotated) and V stored into ``cache`` at
    input_pos[0] (as ``kv_store.rope_store`` stores them), and attention over slots 0..pos (as
    :func:`decode_attention`), in one launch. cos/sin: the layer's float32 rotary tables
    [L, rotary channels] (fewer than D: partial rotary, the rest of each head unrotated)."""
    b, t, width = qkv.shape
    assert t == 1, "decode_attention_qkv takes one token per sequence"
    flat = qkv.reshape(b, width)
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    d = width // (n_q + 2 * cache.parts("k")[0].shape[1])
    return _attend(flat, (flat.stride(0), d), (cos, sin), cache, input_pos, n_q, **knobs)


def _score_args(cache, d: int) -> tuple[float, float, bool]:
    """(qk_scale, cap_out, CAP) of the kernel: scores in log2 units, optionally soft-capped."""
    scale = cache.scale if cache.scale is not None else 1.0 / math.sqrt(d)
    cap = cache.softcap
    if cap is None:
        return scale * LOG2E, 0.0, False
    return scale / cap, cap * LOG2E, True


def _attend(src: torch.Tensor, q_strides: tuple[int, int], rope, cache, input_pos: torch.Tensor, hq: int, *,
            block_n: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
            fast_dequant: bool | None = None) -> torch.Tensor:
    kc, ks, kz, vc, vs, vz, s_strides = cache_args(cache)
    bits = cache.bits
    b, dev = src.shape[0], src.device
    hkv, max_seq, d = kc.shape[1], kc.shape[2], kc.shape[3] * (2 if bits == 4 else 1)
    block_n = block_n or default_block_n(d, bits)
    fast = (FAST_DEQUANT if fast_dequant is None else fast_dequant) and bits != 16
    fast = fast and (bits == 8 or src.dtype == torch.bfloat16 or interpreting())
    split_len, n_splits = n_splits_for(b, hkv, max_seq, block_n)
    out = torch.empty(b, hq, 1, d, device=dev, dtype=src.dtype)
    direct = n_splits == 1
    part = out if direct else torch.empty(b * hq * n_splits * d, device=dev, dtype=torch.float32)
    lse = part if direct else torch.empty(b * hq * n_splits, device=dev, dtype=torch.float32)
    cnt = lse if direct else counters(dev, b * hkv, "attention")
    cos, sin = rope if rope is not None else (src, src)
    window = cache.window or max_seq + 1
    qk_scale, cap_out, cap = _score_args(cache, d)
    _decode_kernel[(b * hkv, n_splits)](
        src, cos, sin, kc, vc, ks, kz, vs, vz, input_pos, out, part, lse, cnt,
        *q_strides, kc.stride(0), kc.stride(1), kc.stride(2), *s_strides,
        hkv, n_splits, split_len, -(-MIN_SPLIT_LEN // block_n) * block_n, window, qk_scale, cap_out,
        GROUP=hq // hkv, BLOCK_H=max(16, triton.next_power_of_2(hq // hkv)), BLOCK_N=block_n, D=d, BITS=bits,
        DOT_F32=interpreting(),  # the CPU interpreter's tl.dot mis-reads bf16 operands
        DIRECT=direct, FAST=fast, ROPE=rope is not None, ROT=cos.shape[-1] if rope is not None else d, CAP=cap,
        LIVE=LIVE_SPLITS,
        num_warps=num_warps or NUM_WARPS, num_stages=num_stages or NUM_STAGES,
        **pdl.triton_args(dev),
    )
    return out
