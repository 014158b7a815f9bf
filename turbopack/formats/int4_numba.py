"""W4A16 RTN in one pass over the weight (numba, parallel over rows): the streaming quantizer's hot loop.

The torch reference (:meth:`W4A16.quantize`) makes ~8 full passes over a chunk (upcast, min, max,
divide, round, add, clamp, narrow, nibble-pack), each a 4-byte-per-weight round trip through
memory; this kernel reads each bf16 weight once (as its uint16 bits, upcast by a shift) and writes
its nibble once. It must be **bit-identical** to the reference, so every intermediate is rounded
to float32 exactly where torch's float32 ops round (``np.float32(...)`` around each operation:
numba would otherwise keep ``hi - lo`` in float64 and round once, at the end), scales are rounded
to bf16 with round-to-nearest-even like ``Tensor.to(torch.bfloat16)``, and ``np.rint`` rounds
half to even like ``torch.round``. tests/formats/test_int4_numba.py checks equality on random
and adversarial groups. Only bf16 scales take this path (numba has no float16 arithmetic).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange


@njit(cache=True, inline="always")
def _bf16_bits(x: np.float32, scratch: np.ndarray) -> np.uint16:
    """float32 -> bf16 bit pattern, round to nearest even (finite inputs: NaN/Inf are refused earlier)."""
    scratch[0] = x
    u = scratch.view(np.uint32)[0]
    u = u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    return np.uint16(u >> np.uint32(16))


@njit(cache=True, inline="always")
def _from_bf16(bits: np.uint16, scratch: np.ndarray) -> np.float32:
    scratch.view(np.uint32)[0] = np.uint32(bits) << np.uint32(16)
    return scratch[0]


@njit(cache=True, inline="always")
def _load_row(w, r: int, is_bf16: bool, row: np.ndarray) -> None:
    row_bits = row.view(np.uint32)
    for j in range(row.shape[0]):
        if is_bf16:  # w holds bf16 bit patterns (uint16): the float32 with the same top 16 bits
            row_bits[j] = np.uint32(w[r, j]) << np.uint32(16)
        else:
            row[j] = np.float32(w[r, j])


@njit(cache=True, inline="always")
def _group_params(row: np.ndarray, base: int, group: int, sym: bool, scratch: np.ndarray):
    """(scale, its bf16 bits, zero code) of one group, as the reference computes them."""
    lo = np.float32(0.0)  # clamp(max=0) / clamp(min=0) of the reference, folded into the init
    hi = np.float32(0.0)
    for j in range(base, base + group):
        v = abs(row[j]) if sym else row[j]
        lo = min(lo, v)
        hi = max(hi, v)
    span = hi if sym else np.float32(hi - lo)
    bits = _bf16_bits(np.float32(span / np.float32(7.0 if sym else 15.0)), scratch)
    s = _from_bf16(bits, scratch)
    if s == 0:
        s = np.float32(1.0)
        bits = np.uint16(0x3F80)  # bf16(1.0): the reference stores the substituted scale
    z = np.float32(8.0) if sym else min(max(np.rint(np.float32(-lo / s)), np.float32(0.0)), np.float32(15.0))
    return s, bits, z


@njit(cache=True, inline="always")
def _code(v: np.float32, s: np.float32, z: np.float32) -> np.float32:
    return min(max(np.rint(np.float32(v / s)) + z, np.float32(0.0)), np.float32(15.0))


@njit(cache=True, parallel=True)
def _quantize_rows(w, is_bf16: bool, group: int, sym: bool, qweight, scales, zeros):  # pragma: no cover - numba
    rows, k = w.shape
    for r in prange(rows):
        row = np.empty(k, np.float32)
        scratch = np.empty(1, np.float32)
        _load_row(w, r, is_bf16, row)
        for g in range(k // group):
            s, bits, z = _group_params(row, g * group, group, sym, scratch)
            scales[r, g] = bits
            zeros[r, g] = np.uint8(z)
            for j in range(g * group, (g + 1) * group, 2):
                qweight[r, j // 2] = np.uint8(_code(row[j], s, z)) | (np.uint8(_code(row[j + 1], s, z)) << np.uint8(4))


@njit(cache=True, parallel=True)
def _fake_rows(w, is_bf16: bool, group: int, sym: bool, out):  # pragma: no cover - numba
    rows, k = w.shape
    for r in prange(rows):
        row = np.empty(k, np.float32)
        scratch = np.empty(1, np.float32)
        _load_row(w, r, is_bf16, row)
        for g in range(k // group):
            s, _, z = _group_params(row, g * group, group, sym, scratch)
            for j in range(g * group, (g + 1) * group):
                out[r, j] = np.float32((_code(row[j], s, z) - z) * s)


def supports(w: torch.Tensor, scale_dtype: str) -> bool:
    return (scale_dtype == "bfloat16" and w.device.type == "cpu" and w.dim() == 2
            and w.dtype in (torch.bfloat16, torch.float16, torch.float32))


def _source(w: torch.Tensor) -> tuple[np.ndarray, bool]:
    """``w`` as a numpy array the kernels read: bf16 as its bits (numba has no bf16; the kernels
    widen by a 16-bit shift), float16 upcast first (numba has no float16 either)."""
    src = w.detach().contiguous() if w.dtype != torch.float16 else w.detach().float()
    is_bf16 = src.dtype == torch.bfloat16
    return (src.view(torch.int16).numpy().view(np.uint16) if is_bf16 else src.numpy()), is_bf16


def fake_w4(w: torch.Tensor, group: int, sym: bool) -> torch.Tensor:
    """``dequantize(quantize(w))`` as float32 in one pass, bit for bit (AWQ's candidate weights)."""
    arr, is_bf16 = _source(w)
    out = np.empty(tuple(w.shape), np.float32)
    _fake_rows(arr, is_bf16, group, sym, out)
    return torch.from_numpy(out)


def quantize_w4(w: torch.Tensor, group: int, sym: bool) -> dict[str, torch.Tensor]:
    """The tensors of :meth:`W4A16.quantize` for bf16 scales, bit for bit; ``w`` is not modified."""
    rows, k = w.shape
    arr, is_bf16 = _source(w)
    qweight = np.empty((rows, k // 2), np.uint8)
    scales = np.empty((rows, k // group), np.uint16)
    zeros = np.empty((rows, k // group), np.uint8)
    _quantize_rows(arr, is_bf16, group, sym, qweight, scales, zeros)
    out = {"qweight": torch.from_numpy(qweight), "scales": torch.from_numpy(scales.view(np.int16)).view(torch.bfloat16)}
    if not sym:
        out["zeros"] = torch.from_numpy(zeros)
    return out
