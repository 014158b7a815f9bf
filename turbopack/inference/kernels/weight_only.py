"""Triton kernels for the 16-bit-activation layouts: w4_t{16,64}x64 (w4a16), i8_t{16,64}x64
(w8a16), fp8_t16x64_upcast and nvfp4_t16x64. They share one program structure; only the tile
decoder differs.

Program tile vs layout tile: a program owns BN output rows (any multiple of 16; a sub-block of a
64-row sm90 tile or several 16-row tiles) and walks K in *steps*: one quantization group (w4,
KS = G) or one 64-wide layout tile (8-bit, KS = 64). In a step each row's codes are one contiguous
run (G/2 or 64 bytes) of the tile-contiguous layout, so the load is 16-byte vectors and whole
32-byte sectors. SPI steps are unrolled per loop iteration (bytes in flight), and SPLIT_K programs
share a row block's K range (epilogue.finish reduces them without extra launches).

Decoding without int->float conversions (those run at quarter rate): a code at mantissa bit P of
a float whose exponent is 2^(23-P) reads as ``2^(23-P) + q``. For w4 the nibbles are brought to
bits 11, 15 or 19 (``w << 11``, ``w >> 1``, ``w >> 13``), so one AND|OR gives the float and one
fma gives the contract's weight: per group, in fp32, ``zs = -(z*s)`` (the uint8 zero point; sym
z = 8) and ``c_P = zs - 2^(23-P)*s``; per element ``fma(2^(23-P) + q, s, c_P)``. That is
``(q - z)*s`` bit for bit for bf16 *and* fp16 scales: z*s and c_P = -(2^(23-P) + z)*s are exact
(<= 13 x 11 significant bits for P >= 11), and the fma rounds an exactly representable value. The
eight per-element tensors are interleaved back to natural k order with tl.join + reshape, so the
activations are read contiguously. NVFP4 steps one 64-wide tile (eight int32 words of codes and
one word of four e4m3 scales per row); a code's sign and magnitude bits go straight into an fp16
(its e2m1 value times 2^-14, exact, subnormals included) and the 2^14 rides on the block scale,
so each weight is e2m1 * e4m3 exactly; 1/gs is the epilogue's scalar scale.

Two program shapes (and nothing else: the kernels read the packed layouts directly, never a
dequantized copy of the weights handed to cuBLAS):
  tc    Y^T[BN, BM] += W16[BN, KS] @ X^T[KS, BM] on tensor cores (W the A operand, as the sm90
        layout intends); W16 = the contract's act-dtype weight. BM >= 16, tokens masked; every M
        from 2 up, prefill included.
  gemv  M == 1: fp32 FMAs, acc[BN, KS] += w * x, reduced once at the end. ROUND=False skips the
        contract's rounding of w to 16 bits (the sum then differs from the contract by that
        rounding only, ~1e-3 relative; it is more exact, not less).
"""

from __future__ import annotations

import dataclasses
import enum
import math

import torch

from turbopack.inference.kernels import pdl
from turbopack.inference.kernels.config import KernelConfig, KernelName, or_default
from turbopack.inference.kernels.epilogue import (
    finish,
    interpreting,
    mma,
    pdl_trigger,
    pdl_wait,
    splitk_buffers,
    tl,
    triton,
)
from turbopack.inference.kernels.nvfp4 import nv4_planes


class Kind(enum.IntEnum):
    """The tile decoder a weight-only kernel compiles in (a Triton constexpr: ``KIND == 0`` in the
    kernels is ``Kind.W4``)."""

    W4 = 0
    I8 = 1
    FP8 = 2
    NVFP4 = 3


W4, I8, FP8, NVFP4 = Kind.W4, Kind.I8, Kind.FP8, Kind.NVFP4
#: elements of one layout-tile row per loaded element (int32 words of w4 / int8 / nvfp4, fp8 bytes)
CODES_PER_LOAD = {W4: 8, I8: 4, FP8: 1, NVFP4: 8}

if triton is not None:

    @triton.jit
    def _nib(src, P: tl.constexpr, s, c):
        """The nibble at bit P of src -> (q - z)*s: one lop3 and one fma (c = -(2^(23-P) + z)*s)."""
        f = ((src & (15 << P)) | ((150 - P) << 23)).to(tl.float32, bitcast=True)  # 2^(23-P) + q
        return tl.fma(f, s, c)

    @triton.jit
    def _w4_planes(QW, S, Z, row_w, row_s, rok, t, TN: tl.constexpr, KS: tl.constexpr, ASYM: tl.constexpr):
        """Group t of BN rows -> eight fp32 [BN, KS/8] planes, plane e = elements k = 8*word + e
        (the contract's weight (q - z)*s, exact, before the 16-bit rounding)."""
        WPG: tl.constexpr = KS // 8
        kw = tl.arange(0, WPG)
        col = (kw // 8) * (TN * 8) + (kw % 8)
        if WPG >= 8:
            base = (t * (WPG // 8)) * (TN * 8)
        else:  # G = 32: two groups per 8-word tile row
            base = (t // 2) * (TN * 8) + (t % 2) * 4
        w = tl.load(QW + row_w[:, None] + base + col[None, :], mask=rok[:, None], other=0)
        s = tl.load(S + row_s + t * TN, mask=rok, other=0.0).to(tl.float32)[:, None]
        if ASYM:  # the uint8 zero points, same tiling as the scales
            z = tl.load(Z + row_s + t * TN, mask=rok, other=0).to(tl.float32)[:, None]
        else:
            z = 8.0
        zs = -(z * s)  # once per group and row: exact in fp32 (4 x <= 11 significant bits)
        # Nibble p sits at bit 4p; three shifts put every nibble at bit P = 11, 15 or 19, where
        # 2^(23-P) + z has <= 13 significant bits, so c_P = zs - 2^(23-P)*s = -(2^(23-P) + z)*s
        # is exact in fp32 for fp16 scales too (the old P = 8 needed 16 + 11 bits). Three P values
        # = three c_P per group; two shifts would give five (sm_90 GEMV, BN=32 G=128 SPI=2: 744
        # SASS instructions per loop against 728).
        c11 = zs - 4096.0 * s
        c15 = zs - 256.0 * s
        c19 = zs - 16.0 * s
        lo = w << 11   # nibbles 0, 1, 2 (e0, e2, e4) -> bits 11, 15, 19
        mid = w >> 1   # nibbles 3, 4, 5 (e6, e1, e3) -> bits 11, 15, 19
        hi = w >> 13   # nibbles 6, 7    (e5, e7)     -> bits 11, 15
        return (_nib(lo, 11, s, c11), _nib(mid, 15, s, c15), _nib(lo, 15, s, c15), _nib(mid, 19, s, c19),
                _nib(lo, 19, s, c19), _nib(hi, 11, s, c11), _nib(mid, 11, s, c11), _nib(hi, 15, s, c15))

    @triton.jit
    def _i8_planes(QW, row_w, rok, t, TN: tl.constexpr):
        """64-wide tile t of BN int8 rows, read as int32 words -> four exact fp32 [BN, 16] planes."""
        j = tl.arange(0, 16)
        w = tl.load(QW + row_w[:, None] + t * (TN * 16) + j[None, :], mask=rok[:, None], other=0)
        hi = w >> 16
        # byte ^ 0x80 = b + 128 as an unsigned mantissa field; minus the float's offset = b
        return (((w & 0xFF) ^ 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0,
                ((w & 0xFF00) ^ 0x47008000).to(tl.float32, bitcast=True) - 32896.0,
                ((hi & 0xFF) ^ 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0,
                ((hi & 0xFF00) ^ 0x47008000).to(tl.float32, bitcast=True) - 32896.0)

    @triton.jit
    def _fp8_tile(QW, row_w, rok, t, TN: tl.constexpr):
        c = tl.arange(0, 64)
        b = tl.load(QW + row_w[:, None] + t * (TN * 64) + c[None, :], mask=rok[:, None], other=0)
        return b.to(tl.float8e4nv, bitcast=True).to(tl.float32)

    @triton.jit
    def _join8(p):
        """Planes -> [BN, KS/8, 2, 2, 2] whose element (n, w, i, j, l) is k = 8w + 4i + 2j + l."""
        return tl.join(tl.join(tl.join(p[0], p[4]), tl.join(p[2], p[6])),
                       tl.join(tl.join(p[1], p[5]), tl.join(p[3], p[7])))

    @triton.jit
    def _join4(p):
        """Planes -> [BN, 16, 2, 2] whose element (n, w, i, j) is k = 4w + 2i + j."""
        return tl.join(tl.join(p[0], p[2]), tl.join(p[1], p[3]))

    @triton.jit
    def _round8(p, DT: tl.constexpr):
        return (p[0].to(DT), p[1].to(DT), p[2].to(DT), p[3].to(DT), p[4].to(DT), p[5].to(DT), p[6].to(DT), p[7].to(DT))

    @triton.jit
    def _round4(p, DT: tl.constexpr):
        return (p[0].to(DT), p[1].to(DT), p[2].to(DT), p[3].to(DT))

    @triton.jit
    def _x_like(X, k0, k_end, KIND: tl.constexpr, KS: tl.constexpr):
        """Activations k0..k0+KS of one row, shaped like the joined weights (no data movement
        between the two: the product is elementwise in the weights' own layout)."""
        a = tl.arange(0, 2)
        if KIND == 1:
            kw = tl.arange(0, 16)
            o = kw[:, None, None] * 4 + a[None, :, None] * 2 + a[None, None, :]
        elif KIND == 2:
            o = tl.arange(0, 64)
        else:  # w4 and nvfp4: eight codes per int32 word
            kw = tl.arange(0, KS // 8)
            o = (
                kw[:, None, None, None] * 8
                + a[None, :, None, None] * 4
                + a[None, None, :, None] * 2
                + a[None, None, None, :]
            )
        return tl.load(X + k0 + o, mask=k0 + o < k_end, other=0.0).to(tl.float32)

    @triton.jit
    def _w16(QW, S, Z, row_w, row_s, rok, t, DT: tl.constexpr, KIND: tl.constexpr, TN: tl.constexpr,
             KS: tl.constexpr, BN: tl.constexpr, ASYM: tl.constexpr):
        """Step t as the contract's 16-bit weights [BN, KS] in natural k order."""
        if KIND == 0:
            w = tl.reshape(_join8(_round8(_w4_planes(QW, S, Z, row_w, row_s, rok, t, TN, KS, ASYM), DT)), (BN, KS))
        elif KIND == 1:
            w = tl.reshape(_join4(_round4(_i8_planes(QW, row_w, rok, t, TN), DT)), (BN, 64))
        elif KIND == 3:  # exact in bf16/fp16: the rounding only changes the type
            w = tl.reshape(_join8(_round8(nv4_planes(QW, Z, row_w, row_s, rok, t, TN), DT)), (BN, 64))
        else:
            w = _fp8_tile(QW, row_w, rok, t, TN).to(DT)
        return w

    @triton.jit
    def _plane_dot(
        v, X, rm, M, stride_xm, k0, e: tl.constexpr, STRIDE: tl.constexpr, k_end, acc, DOT_F32: tl.constexpr
    ):
        """acc += v [BN, W] @ x[k0 + STRIDE*w + e, rm]^T: one plane of codes against the strided
        activations it multiplies."""
        k = k0 + tl.arange(0, v.shape[1]) * STRIDE + e
        xt = tl.load(X + rm[None, :] * stride_xm + k[:, None], mask=(rm[None, :] < M) & (k[:, None] < k_end), other=0.0)
        return mma(v.to(X.dtype.element_ty), xt, acc, DOT_F32)

    @triton.jit
    def _rows(pid_n, NP, KT, KGP, KIND: tl.constexpr, TN: tl.constexpr, BN: tl.constexpr):
        rn = pid_n * BN + tl.arange(0, BN)
        CW: tl.constexpr = 16 if KIND == 1 else (64 if KIND == 2 else 8)  # int32 words (fp8: bytes) per tile row
        row_w = (rn // TN) * (KT * TN * CW) + (rn % TN) * CW
        row_s = (rn // TN) * (KGP * TN) + (rn % TN)
        return rn, rn < NP, row_w, row_s

    @triton.jit
    def _epilogue(acc, rn, rm, M, N, S, BIAS, Y, WS, CNT, stride_ym, tile_id, KIND: tl.constexpr,
                  SCALAR_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K, ATOMIC: tl.constexpr):
        """acc[BN, BM] holds Y^T; per-channel scale (8-bit kinds) and bias are per row of acc."""
        nmask = rn < N
        if KIND == 0:
            scale = 1.0
        elif SCALAR_SCALE:
            scale = tl.load(S)
        else:
            scale = tl.load(S + rn, mask=nmask, other=0.0)[:, None]
        if HAS_BIAS:
            bias = tl.load(BIAS + rn, mask=nmask, other=0.0).to(tl.float32)[:, None]
        else:
            bias = 0.0
        mask = nmask[:, None] & (rm[None, :] < M)
        y_ptrs = Y + rm[None, :] * stride_ym + rn[:, None]
        ws_ptrs = WS + rm[None, :] * N + rn[:, None]
        finish(acc, scale, bias, y_ptrs, ws_ptrs, mask, CNT, tile_id, SPLIT_K, ATOMIC)

    @triton.jit
    def _k_range(pid_k, n_steps, SPI: tl.constexpr, SPLIT_K):
        per = tl.cdiv(tl.cdiv(n_steps, SPI), SPLIT_K) * SPI
        lo = pid_k * per
        return lo, tl.minimum(lo + per, n_steps)

    @triton.jit
    def tc_kernel(X, QW, S, Z, BIAS, Y, WS, CNT, M, N, NP, K, KT, KGP, stride_xm, stride_ym,
                  KIND: tl.constexpr, TN: tl.constexpr, KS: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr,
                  SPI: tl.constexpr, SPLIT_K, ATOMIC: tl.constexpr, ASYM: tl.constexpr,
                  SCALAR_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr, PLANES: tl.constexpr,
                  PDL: tl.constexpr):
        pdl_wait(PDL)
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        rn, rmask, row_w, row_s = _rows(pid_n, NP, KT, KGP, KIND, TN, BN)
        rm = pid_m * BM + tl.arange(0, BM)
        kk = tl.arange(0, KS)
        t_lo, t_hi = _k_range(tl.program_id(2), tl.cdiv(K, KS), SPI, SPLIT_K)
        k_end = tl.minimum(K, t_hi * KS)
        acc = tl.zeros((BN, BM), tl.float32)
        for t0 in range(t_lo, t_hi, SPI):
            for i in tl.static_range(SPI):
                t = t0 + i
                rok = rmask & ((rn * 0 + t) < t_hi)  # (a vector compare: the interpreter mis-types scalar masks)
                if PLANES and KIND == 0:  # eight dots against stride-8 activations: no re-interleave
                    p = _w4_planes(QW, S, Z, row_w, row_s, rok, t, TN, KS, ASYM)
                    for e in tl.static_range(8):
                        acc = _plane_dot(p[e], X, rm, M, stride_xm, t * KS, e, 8, k_end, acc, DOT_F32)
                elif PLANES and KIND == 1:
                    p = _i8_planes(QW, row_w, rok, t, TN)
                    for e in tl.static_range(4):
                        acc = _plane_dot(p[e], X, rm, M, stride_xm, t * KS, e, 4, k_end, acc, DOT_F32)
                else:
                    w = _w16(QW, S, Z, row_w, row_s, rok, t, X.dtype.element_ty, KIND, TN, KS, BN, ASYM)
                    k = t * KS + kk
                    xt = tl.load(
                        X + rm[None, :] * stride_xm + k[:, None],
                        mask=(rm[None, :] < M) & (k[:, None] < k_end),
                        other=0.0,
                    )
                    acc = mma(w, xt, acc, DOT_F32)
        pdl_trigger(PDL)
        _epilogue(acc, rn, rm, M, N, S, BIAS, Y, WS, CNT, stride_ym, pid_m * tl.num_programs(0) + pid_n,
                  KIND, SCALAR_SCALE, HAS_BIAS, SPLIT_K, ATOMIC)

    @triton.jit
    def gemv_kernel(X, QW, S, Z, BIAS, Y, WS, CNT, N, NP, K, KT, KGP,
                    KIND: tl.constexpr, TN: tl.constexpr, KS: tl.constexpr, BN: tl.constexpr,
                    SPI: tl.constexpr, SPLIT_K, ATOMIC: tl.constexpr, ASYM: tl.constexpr,
                    SCALAR_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, ROUND: tl.constexpr, PDL: tl.constexpr):
        pdl_wait(PDL)
        pid_n = tl.program_id(0)
        rn, rmask, row_w, row_s = _rows(pid_n, NP, KT, KGP, KIND, TN, BN)
        t_lo, t_hi = _k_range(tl.program_id(1), tl.cdiv(K, KS), SPI, SPLIT_K)
        k_end = tl.minimum(K, t_hi * KS)
        if KIND == 1:
            acc_nd = tl.zeros((BN, 16, 2, 2), tl.float32)
        elif KIND == 2:
            acc_nd = tl.zeros((BN, 64), tl.float32)
        else:
            acc_nd = tl.zeros((BN, KS // 8, 2, 2, 2), tl.float32)
        for t0 in range(t_lo, t_hi, SPI):
            for i in tl.static_range(SPI):
                t = t0 + i
                rok = rmask & ((rn * 0 + t) < t_hi)  # (a vector compare: the interpreter mis-types scalar masks)
                xv = _x_like(X, t * KS, k_end, KIND, KS)
                if KIND == 0:
                    p = _w4_planes(QW, S, Z, row_w, row_s, rok, t, TN, KS, ASYM)
                    if ROUND:
                        p = _round8(_round8(p, X.dtype.element_ty), tl.float32)
                    w = _join8(p)
                elif KIND == 1:
                    w = _join4(_i8_planes(QW, row_w, rok, t, TN))
                elif KIND == 3:
                    w = _join8(nv4_planes(QW, Z, row_w, row_s, rok, t, TN))
                else:
                    w = _fp8_tile(QW, row_w, rok, t, TN)
                acc_nd += w * xv[None]
        if KIND == 1:
            acc = tl.sum(tl.sum(tl.sum(acc_nd, 3), 2), 1)
        elif KIND == 2:
            acc = tl.sum(acc_nd, 1)
        else:
            acc = tl.sum(tl.sum(tl.sum(tl.sum(acc_nd, 4), 3), 2), 1)
        acc = acc[:, None]
        pdl_trigger(PDL)
        _epilogue(acc, rn, tl.arange(0, 1), 1, N, S, BIAS, Y, WS, CNT, 0, pid_n,
                  KIND, SCALAR_SCALE, HAS_BIAS, SPLIT_K, ATOMIC)


# -- launching ------------------------------------------------------------------------------------


def default_config(m: int, n: int, k: int, ks: int, sms: int = 132) -> KernelConfig:
    """Untuned fallback (configs/<arch>.json overrides it per shape): GEMV at M=1, tensor cores
    from M=2 (prefill included: the packed weights are read directly, never dequantized for
    cuBLAS); split K until ~4 programs per SM for small M."""
    if m == 1:
        cfg = KernelConfig(KernelName.GEMV, block_n=32, block_k=256, num_warps=4, num_stages=2, round_weights=False)
    elif m <= 64:
        cfg = KernelConfig(KernelName.TC, block_n=64, block_m=max(16, triton.next_power_of_2(m)), block_k=128,
                           num_warps=4, num_stages=3)
    else:
        return KernelConfig(KernelName.TC, block_n=128, block_m=128, block_k=64, num_warps=8, num_stages=3, split_k=1)
    blocks = math.ceil(n / cfg.block_n) * math.ceil(m / (cfg.block_m or 1))
    iters = math.ceil(math.ceil(k / ks) / max(1, cfg.block_k // ks))
    return dataclasses.replace(cfg, split_k=max(1, min(math.ceil(4 * sms / blocks), iters, 16)))


def _operands(kind: int, packed: dict[str, torch.Tensor], group: int):
    """(qweight words, S, Z, groups per tile row, K per scale) as the kernels take them: W4's scales
    and zero points (zero points absent: S again, never read), NVFP4's block-scale words as Z and
    1/global scale as S, the 8-bit layouts' bytes as int32 (int8) or uint8 (e4m3) words."""
    qw, s = packed["qweight"], packed["scales"]
    if kind == W4:
        return qw, s, packed.get("zeros", s), s.shape[1], group
    if kind == NVFP4:
        return qw.view(torch.int32), torch.reciprocal(packed["global_scale"].float()), \
            s.view(torch.uint8).view(torch.int32), qw.shape[1], 64
    return qw.view(torch.int32) if kind == I8 else qw.view(torch.uint8), s, s, 1, 64


def launch(x2: torch.Tensor, kind: int, packed: dict[str, torch.Tensor], shape: tuple[int, int],
           bias: torch.Tensor | None, cfg: KernelConfig, *, group: int = 64, sym: bool = True,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """y [M, N] = x2 [M, K] @ W^T (+ bias) for a 16-bit-activation layout; ``cfg`` as default_config."""
    n, k = shape
    nt, kt, tn = packed["qweight"].shape[:3]
    qw, s, zp, kgp, ks = _operands(kind, packed, group)
    m = x2.shape[0]
    y = out if out is not None else torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    spi = max(1, cfg.block_k // ks)
    split = max(1, min(or_default(cfg.split_k, 1), math.ceil(math.ceil(k / ks) / spi)))
    bn = cfg.block_n
    gemv = cfg.kernel is KernelName.GEMV and m == 1
    bm = 1 if gemv else or_default(cfg.block_m, 16)  # (a GEMV config at M > 1 runs the tensor-core kernel)
    n_blocks, m_blocks = math.ceil(nt * tn / bn), math.ceil(m / bm)
    ws, cnt = splitk_buffers(x2.device, m, n, n_blocks * m_blocks, split)
    b = bias if bias is not None else y
    common = dict(
        KIND=int(kind), TN=tn, KS=ks, BN=bn, SPI=spi, SPLIT_K=split, ATOMIC=split > 1,
        ASYM=kind == W4 and not sym, SCALAR_SCALE=kind != W4 and s.numel() == 1, HAS_BIAS=bias is not None,
        num_warps=or_default(cfg.num_warps, 4), num_stages=or_default(cfg.num_stages, 2),
        **pdl.triton_args(x2.device, "linears"),
    )
    if gemv:
        gemv_kernel[(n_blocks, split)](x2, qw, s, zp, b, y, ws, cnt, n, nt * tn, k, kt, kgp,
                                       ROUND=or_default(cfg.round_weights, True), **common)
    else:
        tc_kernel[(n_blocks, m_blocks, split)](
            x2, qw, s, zp, b, y, ws, cnt, m, n, nt * tn, k, kt, kgp, x2.stride(0), y.stride(0),
            BM=bm, DOT_F32=interpreting(),
            PLANES=bool(cfg.planes) and (kind == I8 or (kind == W4 and ks >= 128)), **common,
        )
    return y
