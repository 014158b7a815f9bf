"""CPU emulator of the GPU kernels: a numba GEMM per layout that reads the PACKED tensors.

It decodes tiles and nibble positions itself (never calls ``unpack``) and follows each layout's
numeric contract (docs/layouts.md), so it is both the oracle the GPU kernels are tested against
and the runtime's CPU fallback:

  w4_*:            zs = -(z*s) per group, w16 = act(fp32 fma(q, s, zs)) == act((q-z)*s) exactly
                   (sym: z = 8); y = fp32 sum_k x16*w16
  i8_t*, fp8 upcast: y = fp32(sum_k x16 * q) * s_n
  i8_rowmajor:     the w8a8 format's math (per-token int8 x, int32 accumulation)
  fp8_rowmajor:    the fp8 format's math (per-token e4m3 x, fp32 accumulation)
  nvfp4_t16x64:    w16 = e2m1(q) * s_b (exact in 16 bits); y = fp32(sum_k x16*w16) * fp32(1/gs)

then ``+ bias`` (fp32) and one cast to x.dtype. The fp32 sum order is unspecified (GPU kernels
differ among themselves), so compare with a tolerance, not bit for bit (w8a8 is bit-exact).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from numba import njit, prange

from turbopack.errors import ShapeError
from turbopack.formats import W4A16, Format
from turbopack.formats.fp8 import quantize_rows_fp8
from turbopack.formats.int8 import quantize_rows_int8
from turbopack.layouts import get_layout
from turbopack.layouts.base import Layout, LayoutName, check_packed
from turbopack.layouts.w4 import NIBBLE_OF_ELEMENT

_NIBBLE_SHIFT = np.array([4 * p for p in NIBBLE_OF_ELEMENT], np.int64)
#: how w16 is rounded: the activation dtype (fp32 activations: no rounding)
_ROUND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


@njit(cache=True)
def _fp16_round(x):
    """float32 -> nearest float16 (ties to even), returned as float32."""
    a = abs(x)
    if a >= 65520.0:
        return np.float32(math.copysign(math.inf, x))
    if a < 6.103515625e-05:  # fp16 subnormal: a multiple of 2^-24 (x * 2^24 is exact)
        return np.float32(np.rint(np.float64(x) * 16777216.0) / 16777216.0)
    _, e = math.frexp(x)  # |x| in [2^(e-1), 2^e): 11 significant bits -> ulp 2^(e-11)
    return np.float32(math.ldexp(np.rint(math.ldexp(np.float64(x), 11 - e)), e - 11))


@njit(cache=True)
def _round_act(buf, mode):
    if mode == 1:  # bf16: round the low 16 bits away, ties to even
        bits = buf.view(np.uint32)
        for i in range(bits.size):
            u = np.int64(bits[i])
            bits[i] = np.uint32((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000)
    elif mode == 2:
        for i in range(buf.size):
            buf[i] = _fp16_round(buf[i])


@njit(cache=True, fastmath={"reassoc"})
def _dot(a, b):
    acc = np.float32(0.0)
    for i in range(a.size):
        acc += a[i] * b[i]
    return acc


@njit(cache=True)
def _decode_w4_row(qw, scales, zeros, nt, r, group, sym, w, zs):
    """Row r of N tile nt -> w[K_pad] (fp32, before the act rounding), straight from the words.
    The zero point is folded once per group, zs = -(z*s), exact in fp32 (4 x <= 11 significant
    bits); then q*s + zs is (q - z)*s exactly (q*s is exact too), i.e. the kernels' one fma."""
    kt_count, words = qw.shape[1], qw.shape[3]
    tk = words * 8
    for g in range(zs.size):
        z = np.float32(8.0) if sym else np.float32(zeros[nt, g, r])
        zs[g] = -(z * scales[nt, g, r])
    for kt in range(kt_count):
        for j in range(words):
            word = np.int64(qw[nt, kt, r, j])
            k0 = kt * tk + 8 * j
            for e in range(8):
                q = (word >> _NIBBLE_SHIFT[e]) & 15
                g = (k0 + e) // group
                w[k0 + e] = np.float32(q) * scales[nt, g, r] + zs[g]


@njit(cache=True, parallel=True)
def _gemm_w4(x, qw, scales, zeros, group, sym, mode):
    m_rows, k_pad = x.shape
    nt_count, tn = qw.shape[0], qw.shape[2]
    y = np.zeros((m_rows, nt_count * tn), np.float32)
    for nt in prange(nt_count):
        w = np.empty(k_pad, np.float32)
        zs = np.empty(scales.shape[1], np.float32)
        for r in range(tn):
            _decode_w4_row(qw, scales, zeros, nt, r, group, sym, w, zs)
            _round_act(w, mode)
            for m in range(m_rows):
                y[m, nt * tn + r] = _dot(x[m], w)
    return y


@njit(cache=True, parallel=True)
def _gemm_lut(x, codes, lut):
    """codes uint8 [NT, KT, TN, TK] (row-major layouts: KT = 1), value of a code = lut[code]."""
    m_rows, k_pad = x.shape
    nt_count, kt_count, tn, tk = codes.shape
    y = np.zeros((m_rows, nt_count * tn), np.float32)
    for nt in prange(nt_count):
        w = np.empty(k_pad, np.float32)
        for r in range(tn):
            for kt in range(kt_count):
                for c in range(tk):
                    w[kt * tk + c] = lut[codes[nt, kt, r, c]]
            for m in range(m_rows):
                y[m, nt * tn + r] = _dot(x[m], w)
    return y


@njit(cache=True, parallel=True)
def _gemm_i8(xq, codes):
    """int8 x int8 with exact integer accumulation (what the IMMA int32 accumulator holds)."""
    m_rows, k_pad = xq.shape
    nt_count, kt_count, tn, tk = codes.shape
    y = np.zeros((m_rows, nt_count * tn), np.int64)
    for nt in prange(nt_count):
        w = np.empty(k_pad, np.int32)
        for r in range(tn):
            for kt in range(kt_count):
                for c in range(tk):
                    w[kt * tk + c] = codes[nt, kt, r, c]
            for m in range(m_rows):
                acc = 0
                for k in range(k_pad):
                    acc += xq[m, k] * w[k]
                y[m, nt * tn + r] = acc
    return y


@njit(cache=True)
def e4m3_table():
    """float32 value of every e4m3fn byte: s eeee mmm, bias 7, subnormals at e = 0, NaN at 0x7F/0xFF."""
    t = np.empty(256, np.float32)
    for b in range(256):
        e, m = (b >> 3) & 15, b & 7
        if e == 15 and m == 7:
            v = np.nan
        elif e == 0:
            v = m * 2.0**-9
        else:
            v = (1.0 + m / 8.0) * 2.0 ** (e - 7)
        t[b] = -v if b & 0x80 else v
    return t


_INT8_LUT = np.arange(256, dtype=np.uint8).view(np.int8).astype(np.float32)
_E2M1_LUT = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)


@njit(cache=True, parallel=True)
def _gemm_nvfp4(x, codes, scales, e2m1, e4m3):
    """codes uint8 [NT, KT, TN, 32] (two nibbles, low = even k), scales uint8 [NT, KT, TN, 4]
    (e4m3, one per 16 k): w = e2m1 * e4m3, exact in fp32 (and in bf16/fp16: <= 6 significant bits)."""
    m_rows, k_pad = x.shape
    nt_count, kt_count, tn = codes.shape[0], codes.shape[1], codes.shape[2]
    y = np.zeros((m_rows, nt_count * tn), np.float32)
    for nt in prange(nt_count):
        w = np.empty(k_pad, np.float32)
        for r in range(tn):
            for kt in range(kt_count):
                for b in range(32):
                    byte = codes[nt, kt, r, b]
                    s = e4m3[scales[nt, kt, r, b // 8]]
                    w[kt * 64 + 2 * b] = e2m1[byte & 15] * s
                    w[kt * 64 + 2 * b + 1] = e2m1[byte >> 4] * s
            for m in range(m_rows):
                y[m, nt * tn + r] = _dot(x[m], w)
    return y


def _x_padded(x: torch.Tensor, k_pad: int) -> np.ndarray:
    xp = np.zeros((x.shape[0], k_pad), np.float32)
    xp[:, : x.shape[1]] = x.float().numpy()
    return xp


def _codes4d(packed: torch.Tensor, dtype: torch.dtype = torch.uint8) -> np.ndarray:
    """The packed codes as [NT, KT, TN, TK] (a row-major [NT, TN, K_pad] is one K tile)."""
    c = packed.contiguous().view(dtype).numpy()
    return c.reshape(c.shape[0], 1, c.shape[1], c.shape[2]) if c.ndim == 3 else c


def _scale_row(packed: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    s = packed["scales"].float()
    return s[:n] if s.numel() > 1 else s


def _w4(
    x: torch.Tensor,
    fmt: Format,
    layout: Layout,
    packed: dict[str, torch.Tensor],
    shape: tuple[int, int],
    act: torch.dtype,
) -> torch.Tensor:
    pad = layout.padding(shape)
    qw = packed["qweight"].contiguous().numpy().view(np.uint32)
    s = packed["scales"].float().numpy()
    assert isinstance(fmt, W4A16)  # dispatched here by the format's name
    z = np.zeros((1, 1, 1), np.uint8) if fmt.sym else packed["zeros"].contiguous().numpy()
    y = _gemm_w4(_x_padded(x, pad.k_pad), qw, s, z, fmt.group_size, fmt.sym, _ROUND[act])
    return torch.from_numpy(y[:, : shape[0]])


def _lut_acc(
    x: torch.Tensor, layout: Layout, packed: dict[str, torch.Tensor], shape: tuple[int, int], lut: np.ndarray
) -> torch.Tensor:
    y = _gemm_lut(_x_padded(x, layout.padding(shape).k_pad), _codes4d(packed["qweight"]), lut)
    return torch.from_numpy(y[:, : shape[0]])


def _weights_only(x, fmt, layout, packed, shape, act):
    lut = e4m3_table() if packed["qweight"].dtype == torch.float8_e4m3fn else _INT8_LUT
    return _lut_acc(x, layout, packed, shape, lut) * _scale_row(packed, shape[0])


def _w8a8(x, fmt, layout, packed, shape, act):
    qx, sx = quantize_rows_int8(x)
    xq = np.zeros((x.shape[0], layout.padding(shape).k_pad), np.int32)
    xq[:, : x.shape[1]] = qx.numpy()
    acc = torch.from_numpy(_gemm_i8(xq, _codes4d(packed["qweight"], torch.int8))[:, : shape[0]])
    return acc.float() * sx[:, None] * _scale_row(packed, shape[0])[None, :]


def _fp8_native(x, fmt, layout, packed, shape, act):
    qx, sx = quantize_rows_fp8(x)
    acc = _lut_acc(qx.float(), layout, packed, shape, e4m3_table())
    s = _scale_row(packed, shape[0])
    return acc * sx[:, None] * (s[None, :] if s.numel() > 1 else s)


def _nvfp4(x, fmt, layout, packed, shape, act):
    codes = packed["qweight"].contiguous().numpy()
    scales = packed["scales"].contiguous().view(torch.uint8).numpy()
    y = _gemm_nvfp4(_x_padded(x, layout.padding(shape).k_pad), codes, scales, _E2M1_LUT, e4m3_table())
    return torch.from_numpy(y[:, : shape[0]]) * torch.reciprocal(packed["global_scale"].float())


EMULATORS: dict[LayoutName, Callable[..., torch.Tensor]] = {
    LayoutName.W4_T16X64: _w4,
    LayoutName.W4_T64X64: _w4,
    LayoutName.I8_T16X64: _weights_only,
    LayoutName.I8_T64X64: _weights_only,
    LayoutName.FP8_T16X64_UPCAST: _weights_only,
    LayoutName.I8_ROWMAJOR: _w8a8,
    LayoutName.FP8_ROWMAJOR: _fp8_native,
    LayoutName.NVFP4_T16X64: _nvfp4,
}


def emulate_linear(x: torch.Tensor, fmt: Format, layout: Layout | LayoutName | str, packed: dict[str, torch.Tensor],
                   shape: tuple[int, int], bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T + bias`` computed from the packed tensors as the GPU kernel would: [.., K] -> [.., N]."""
    layout = get_layout(layout)
    layout.check_format(fmt)
    for spec in layout.packed_specs(fmt, shape):
        check_packed(f"emulate {layout.name.value}: {spec.suffix}", packed.get(spec.suffix), spec)
    if x.dtype not in _ROUND or x.shape[-1] != shape[1]:
        raise ShapeError(
            f"emulate {layout.name.value}: x is {x.dtype} {list(x.shape)}; expected bfloat16/float16/float32 [..., "
            f"{shape[1]}]"
        )
    lead = x.shape[:-1]
    x2 = x.detach().reshape(-1, shape[1]).cpu()
    y = EMULATORS[layout.name](x2, fmt, layout, packed, shape, x.dtype)
    if bias is not None:
        y = y + bias.detach().float().cpu()
    return y.to(x.dtype).reshape(*lead, shape[0])


def reference_linear(x: torch.Tensor, fmt: Format, layout: Layout | LayoutName | str, q: dict[str, torch.Tensor],
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """The format-level reference a layout's kernel should match: ``fmt.linear``, except for
    weights-only layouts (fp8 upcast), whose activations stay 16-bit."""
    if get_layout(layout).weights_only:
        return Format.linear(fmt, x, q, bias)
    return fmt.linear(x, q, bias)
