"""A format's quantization grid, split into "choose (scale, zero) for a group" and "map values to
codes with given (scale, zero)".

Calibrated methods need the two halves apart: GPTQ fixes a group's parameters and then quantizes
its columns one at a time; AWQ fake-quantizes many candidate weights. The math is the format's own
(turbopack/formats, docs/formats.md) op for op, so what a method produces packs into exactly the
tensors RTN would write for the same codes; tests check ``fake(w) == fmt.dequantize(fmt.quantize(w))``
bit for bit. All functions are device-agnostic (CUDA or CPU).

Every grid here is ``codes = clamp(round(w / s) + z, qmin, qmax)``, ``w' = (codes - z) * s``:
int4 asymmetric (z per group), int4 symmetric (z = 8, the offset-binary storage), int8 (z = 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from turbopack.errors import TurbopackError
from turbopack.formats import DTYPES, Format, FormatName
from turbopack.formats.int4 import pack_nibbles
from turbopack.registry import Registry


@dataclass(frozen=True)
class Grid:
    """``group_size`` columns share one (scale, zero); per-channel formats use the whole row."""

    fmt: Format
    group_size: int | None  # None: one group per row (K columns)
    qmin: int
    qmax: int

    @property
    def has_zero(self) -> bool:
        """Whether groups carry a zero point (their range need not be centred on 0)."""
        return False

    def group_of(self, k: int) -> int:
        return self.group_size or k

    def params(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero), float32, for groups laid along the last dim of ``w`` ([..., G])."""
        raise NotImplementedError

    def codes(self, w: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Codes (float) of ``w`` [..., C] for per-row ``s``/``z`` [...] (broadcast over C)."""
        return torch.clamp(torch.round(w.float() / s[..., None]) + z[..., None], self.qmin, self.qmax)

    @staticmethod
    def dequant(codes: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return (codes - z[..., None]) * s[..., None]

    def fake(self, w: torch.Tensor) -> torch.Tensor:
        """w [N, K] -> the float32 weight the format would store for it (RTN)."""
        n, k = w.shape
        g = self.group_of(k)
        wg = w.float().reshape(n, k // g, g)
        s, z = self.params(wg)
        return self.dequant(self.codes(wg, s, z), s, z).reshape(n, k)

    def pack(self, codes: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Codes [N, K] and per-group s/z [N, K/G] -> the format's on-disk tensors (CPU)."""
        raise NotImplementedError


class Int4Grid(Grid):
    @property
    def has_zero(self) -> bool:
        return not self.fmt.sym

    def fake(self, w: torch.Tensor) -> torch.Tensor:
        from turbopack.formats import int4_numba  # numba compiles on first import (~0.5 s): only when used

        if int4_numba.supports(w, self.fmt.scale_dtype):  # AWQ's many candidates: one pass, same bits
            return int4_numba.fake_w4(w, self.fmt.group_size, self.fmt.sym)
        return super().fake(w)

    def params(self, w):
        sdt = DTYPES[self.fmt.scale_dtype]
        if self.fmt.sym:
            s = (w.abs().amax(-1) / 7).to(sdt).float()
            s = torch.where(s == 0, torch.ones_like(s), s)
            return s, torch.full_like(s, 8.0)
        lo = w.amin(-1).clamp(max=0)
        hi = w.amax(-1).clamp(min=0)
        s = ((hi - lo) / 15).to(sdt).float()
        s = torch.where(s == 0, torch.ones_like(s), s)
        return s, torch.clamp(torch.round(-lo / s), 0, 15)

    def pack(self, codes, s, z):
        out = {"qweight": pack_nibbles(codes.cpu().to(torch.uint8)), "scales": s.cpu().to(DTYPES[self.fmt.scale_dtype])}
        if not self.fmt.sym:
            out["zeros"] = z.cpu().to(torch.uint8)
        return out


class Int8Grid(Grid):
    def params(self, w):
        s = w.abs().amax(-1) / 127
        s = torch.where(s == 0, torch.ones_like(s), s)
        return s, torch.zeros_like(s)

    def pack(self, codes, s, z):
        return {"qweight": codes.cpu().to(torch.int8), "scales": s.cpu().reshape(-1).float()}


GRIDS: Registry = Registry("grid")
GRIDS.register(FormatName.W4A16, lambda fmt: Int4Grid(fmt, fmt.group_size, 0, 15))
GRIDS.register(FormatName.W8A16, lambda fmt: Int8Grid(fmt, None, -127, 127))
GRIDS.register(FormatName.W8A8, lambda fmt: Int8Grid(fmt, None, -127, 127))


def grid_for(fmt: Format, method: str) -> Grid:
    if fmt.name not in GRIDS:
        raise TurbopackError(f"--method {method} does not support --format {fmt.name.value}; use w4a16, w8a16 or w8a8 "
                             f"(fp8: --method rtn, optionally with --smooth)")
    return GRIDS.get(fmt.name)(fmt)
