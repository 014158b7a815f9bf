"""W8A8 on ``i8_rowmajor`` (and the per-token activation quantizer the FP8 path shares).

  quant_rows_kernel  one program per token row: absmax, scale, round, store the K_pad-wide codes
                     (zeros in the padding) and the float32 scale, in one launch. The math is the
                     format's (turbopack.formats.int8 / fp8): int8 multiplies by the IEEE reciprocal
                     127/amax (vLLM's convention), e4m3 divides by the scale; round half to even
                     (the 1.5*2^23 trick), clamp to +-127 (int8) or +-448 then RNE cast (e4m3).
  i8_mm_kernel       int8 tl.dot (IMMA / wgmma s8) with int32 accumulation, the scale epilogue
                     y = acc * s_m * s_n + bias fused, split-K through epilogue.finish.
  cuda_i8ws          the warp-specialized CUDA C++ int8 GEMM on Hopper (csrc/i8_wgws.cu): TMA copies,
                     wgmma s8, the same scale epilogue; prefill, where the tuned table picks it.
  int_mm             torch._int_mm (cuBLASLt) + scale_kernel (the same epilogue as one pass over
                     the int32 result). _int_mm needs M > 16, so smaller batches are zero-padded.
dispatch picks among them by measurement (configs/sm90.json).
"""

from __future__ import annotations

import math

import torch

from turbopack.inference.kernels import cuda_i8ws, pdl
from turbopack.inference.kernels.config import KernelConfig, KernelName, or_default
from turbopack.inference.kernels.epilogue import (
    finish,
    interpreting,
    pdl_enter,
    pdl_trigger,
    pdl_wait,
    splitk_buffers,
    tl,
    triton,
)

if triton is not None:
    from triton.language.extra import libdevice

    @triton.jit
    def _e4m3_round(v):
        """RNE of |v| <= 448 to the e4m3 grid, in fp32 (adding 2^(e+20) leaves 3 mantissa bits;
        2^14 is the subnormal step 2^-9's). Only for the interpreter, whose fp8 cast does not
        carry a mantissa round-up into the exponent; GPUs convert in hardware."""
        bits = v.to(tl.int32, bitcast=True)
        c = tl.maximum((bits & 0x7F800000) + (20 << 23), 0x46800000).to(tl.float32, bitcast=True)
        a = tl.abs(v)
        return tl.where(bits < 0, -((a + c) - c), (a + c) - c)  # the sign bit: -0.0 stays -0.0

    @triton.jit
    def _quantize(x, s, amax, FP8: tl.constexpr, SOFT_CAST: tl.constexpr):
        if FP8:
            v = tl.clamp(tl.div_rn(x, s), -448.0, 448.0)
            if SOFT_CAST:
                v = _e4m3_round(v)
            q = v.to(tl.float8e4nv)
        else:
            inv = tl.where(amax == 0.0, 1.0, tl.div_rn(127.0, amax))
            if SOFT_CAST:  # the interpreter multiplies in numpy float32 and has no libdevice
                v = x * inv
            else:  # mul_rn: the compiler may not contract it into an fma with the add below
                v = libdevice.mul_rn(x, inv)
            q = tl.clamp((v + 12582912.0) - 12582912.0, -127.0, 127.0).to(tl.int8)  # RNE for |v| < 2^22
        return q

    @triton.jit
    def quant_rows_kernel(X, Q, S, K, KP, stride_xm, stride_qm, BK: tl.constexpr, ONE_PASS: tl.constexpr,
                          FP8: tl.constexpr, SOFT_CAST: tl.constexpr, PDL: tl.constexpr):
        pdl_enter(PDL)
        m = tl.program_id(0)
        QMAX: tl.constexpr = 448.0 if FP8 else 127.0
        kk = tl.arange(0, BK)
        xrow = X + m.to(tl.int64) * stride_xm
        qrow = Q + m.to(tl.int64) * stride_qm
        if ONE_PASS:  # the whole row lives in registers: read once
            x = tl.load(xrow + kk, mask=kk < K, other=0.0).to(tl.float32)
            amax = tl.max(tl.abs(x), axis=0)
            s = tl.div_rn(amax, QMAX)
            s = tl.where(s == 0.0, 1.0, s)
            tl.store(qrow + kk, _quantize(x, s, amax, FP8, SOFT_CAST), mask=kk < KP)
        else:
            amax = tl.zeros([BK], tl.float32)
            for k0 in range(0, K, BK):
                x = tl.load(xrow + k0 + kk, mask=k0 + kk < K, other=0.0).to(tl.float32)
                amax = tl.maximum(amax, tl.abs(x))
            amax_row = tl.max(amax, axis=0)
            s = tl.div_rn(amax_row, QMAX)
            s = tl.where(s == 0.0, 1.0, s)
            for k0 in range(0, KP, BK):
                x = tl.load(xrow + k0 + kk, mask=k0 + kk < K, other=0.0).to(tl.float32)
                tl.store(qrow + k0 + kk, _quantize(x, s, amax_row, FP8, SOFT_CAST), mask=k0 + kk < KP)
        tl.store(S + m, s)

    @triton.jit
    def i8_mm_kernel(A, W, SA, SW, BIAS, Y, WS, CNT, M, N, NP, KP, stride_am, stride_ym,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                     SPLIT_K, ATOMIC: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
                     PDL: tl.constexpr):
        pdl_wait(PDL)
        pid = tl.program_id(0)
        num_m = tl.cdiv(M, BM)
        num_n = tl.cdiv(NP, BN)
        # grouped order: GROUP_M row blocks share each weight block while it is in L2
        group = pid // (GROUP_M * num_n)
        first_m = group * GROUP_M
        size_m = tl.minimum(num_m - first_m, GROUP_M)
        pid_m = first_m + (pid % (GROUP_M * num_n)) % size_m
        pid_n = (pid % (GROUP_M * num_n)) // size_m
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        per = tl.cdiv(tl.cdiv(KP, BK), SPLIT_K) * BK
        k_lo = tl.program_id(1) * per
        k_hi = tl.minimum(k_lo + per, KP)
        acc = tl.zeros((BM, BN), tl.int32)
        a_ptrs = A + rm[:, None].to(tl.int64) * stride_am + rk[None, :]
        w_ptrs = W + rn[None, :].to(tl.int64) * KP + rk[:, None]
        for k0 in range(k_lo, k_hi, BK):
            a = tl.load(a_ptrs + k0, mask=(rm[:, None] < M) & (k0 + rk[None, :] < k_hi), other=0)
            b = tl.load(w_ptrs + k0, mask=(rn[None, :] < NP) & (k0 + rk[:, None] < k_hi), other=0)
            if DOT_F32:
                acc += tl.dot(a.to(tl.float32), b.to(tl.float32)).to(tl.int32)
            else:
                acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        nmask = rn < N
        scale = tl.load(SA + rm, mask=rm < M, other=0.0)[:, None] * tl.load(SW + rn, mask=nmask, other=0.0)[None, :]
        if HAS_BIAS:
            bias = tl.load(BIAS + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
        else:
            bias = 0.0
        mask = (rm[:, None] < M) & nmask[None, :]
        y_ptrs = Y + rm[:, None] * stride_ym + rn[None, :]
        ws_ptrs = WS + rm[:, None] * N + rn[None, :]
        pdl_trigger(PDL)
        finish(acc.to(tl.float32), scale, bias, y_ptrs, ws_ptrs, mask, CNT, pid, SPLIT_K, ATOMIC)

    @triton.jit
    def scale_kernel(ACC, SA, SW, BIAS, Y, M, N, stride_acc, stride_ym,
                     BM: tl.constexpr, BN: tl.constexpr, HAS_BIAS: tl.constexpr):
        """y = acc * s_m * s_n + bias over an int32 GEMM result (the torch._int_mm path)."""
        rm = tl.program_id(0) * BM + tl.arange(0, BM)
        rn = tl.program_id(1) * BN + tl.arange(0, BN)
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        acc = tl.load(ACC + rm[:, None].to(tl.int64) * stride_acc + rn[None, :], mask=mask, other=0).to(tl.float32)
        y = acc * tl.load(SA + rm, mask=rm < M, other=0.0)[:, None] * tl.load(SW + rn, mask=rn < N, other=0.0)[None, :]
        if HAS_BIAS:
            y += tl.load(BIAS + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        tl.store(Y + rm[:, None].to(tl.int64) * stride_ym + rn[None, :], y.to(Y.dtype.element_ty), mask=mask)


ONE_PASS_MAX = 16384


def quantize_rows(x2: torch.Tensor, k_pad: int, fp8: bool, min_rows: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token codes [max(M, min_rows), k_pad] (int8 or e4m3; padding rows/columns zero) and
    float32 scales [M, 1] (rows past M: scale 1, codes 0)."""
    m, k = x2.shape
    rows = max(m, min_rows)
    dt = torch.float8_e4m3fn if fp8 else torch.int8
    if rows > m:
        q = torch.zeros(rows, k_pad, dtype=dt, device=x2.device)
    else:
        q = torch.empty(rows, k_pad, dtype=dt, device=x2.device)
    s = torch.empty(m, 1, dtype=torch.float32, device=x2.device)
    one = k_pad <= ONE_PASS_MAX
    bk = triton.next_power_of_2(k_pad) if one else 4096
    warps = 1 if interpreting() else max(1, min(16, bk // 1024))
    quant_rows_kernel[(m,)](
        x2,
        q,
        s,
        k,
        k_pad,
        x2.stride(0),
        q.stride(0),
        BK=bk,
        ONE_PASS=one,
        FP8=fp8,
        SOFT_CAST=interpreting(),
        num_warps=warps,
        **pdl.triton_args(x2.device, "linears"),
    )
    return q, s


def default_config(m: int, n: int, k: int, sms: int = 132) -> KernelConfig:
    if m > 16 and not interpreting():
        return KernelConfig(KernelName.INT_MM)
    bm, bn, bk = 16, 64, 128
    split = max(1, min(math.ceil(4 * sms / (math.ceil(n / bn) * math.ceil(m / bm))), math.ceil(k / bk), 16))
    return KernelConfig(KernelName.TRITON, block_m=bm, block_n=bn, block_k=bk, group_m=8, split_k=split,
                        num_warps=4, num_stages=4)


def ws_knobs(cfg: KernelConfig) -> dict:
    """cuda_i8ws.i8_wgws's keywords from a cuda_ws config (W8A8's and FP8's)."""
    return dict(bm=or_default(cfg.block_m, cuda_i8ws.DEFAULT_BM),
                stages=or_default(cfg.ring_stages, cuda_i8ws.DEFAULT_STAGES), split_k=cfg.split_k or 0,
                cluster=bool(cfg.cluster), stream=bool(cfg.stream_k))


def linear(x2: torch.Tensor, packed: dict[str, torch.Tensor], shape: tuple[int, int], bias: torch.Tensor | None,
           cfg: KernelConfig, out: torch.Tensor | None = None) -> torch.Tensor:
    """y [M, N] for w8a8 on i8_rowmajor: per-token int8 activations, int32 accumulation."""
    w = packed["qweight"]
    np_, kp = w.shape[0] * w.shape[1], w.shape[2]
    n = shape[0]
    m = x2.shape[0]
    y = out if out is not None else torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    sw = packed["scales"]
    b = bias if bias is not None else y
    if cfg.kernel is KernelName.CUDA_WS:  # dispatch checked cuda_i8ws.supports
        q, sa = quantize_rows(x2, kp, fp8=False)
        return cuda_i8ws.i8_wgws(q, sa, packed, shape, bias, y, **ws_knobs(cfg))
    use_int_mm = cfg.kernel is KernelName.INT_MM
    q, sa = quantize_rows(x2, kp, fp8=False, min_rows=17 if use_int_mm else 0)
    if use_int_mm:
        acc = torch._int_mm(q, w.view(np_, kp).t())
        scale_kernel[(triton.cdiv(m, 32), triton.cdiv(n, 128))](acc, sa, sw, b, y, m, n, acc.stride(0), y.stride(0),
                                                                 BM=32, BN=128, HAS_BIAS=bias is not None, num_warps=4)
        return y
    bm, bn, bk = cfg.block_m, cfg.block_n, cfg.block_k
    split = max(1, min(or_default(cfg.split_k, 1), triton.cdiv(kp, bk)))
    tiles = triton.cdiv(m, bm) * triton.cdiv(np_, bn)
    ws, cnt = splitk_buffers(x2.device, m, n, tiles, split)
    i8_mm_kernel[(tiles, split)](q, w, sa, sw, b, y, ws, cnt, m, n, np_, kp, q.stride(0), y.stride(0),
                                 BM=bm, BN=bn, BK=bk, GROUP_M=or_default(cfg.group_m, 8), SPLIT_K=split,
                                 ATOMIC=split > 1, HAS_BIAS=bias is not None, DOT_F32=interpreting(),
                                 num_warps=or_default(cfg.num_warps, 4), num_stages=or_default(cfg.num_stages, 3),
                                 **pdl.triton_args(x2.device, "linears"))
    return y
