"""W4A16: group-wise int4 weights along K, 16-bit activations.

Math (docs/formats.md states the same):
  group g of row n covers columns [g*G, (g+1)*G).
  asymmetric:  lo = min(min(w_g), 0), hi = max(max(w_g), 0)     (0 is always representable)
               s  = to_scale_dtype((hi - lo) / 15)  (s == 0 -> 1)
               z  = clamp(round(-lo / s), 0, 15)            (uint4)
               q  = clamp(round(w / s) + z, 0, 15)          (uint4)
               w' = (q - z) * s
  symmetric:   s  = to_scale_dtype(max|w_g| / 7)  (s == 0 -> 1)
               q  = clamp(round(w / s), -8, 7) + 8          (stored as uint4, offset binary)
               w' = (q - 8) * s
round() is round-half-to-even; divisions are float32 using the scale as stored.

On disk: qweight uint8 [N, K/2] — byte j of a row holds column 2j in bits 0-3 and column 2j+1
in bits 4-7 (the arch-neutral order; per-arch layouts re-pack it); scales [N, K/G] in
``scale_dtype``; zeros uint8 [N, K/G] (asymmetric only, one zero per byte).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from turbopack.errors import ShapeError
from turbopack.formats.base import DTYPES, Format, FormatName, TensorSpec

GROUP_SIZES = (32, 64, 128)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes [R, K] (values 0..15, K even) -> uint8 [R, K/2], even column in the low nibble."""
    c = codes.to(torch.uint8)
    return c[:, 0::2] | (c[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`."""
    out = torch.empty(packed.shape[0], packed.shape[1] * 2, dtype=torch.uint8, device=packed.device)
    out[:, 0::2] = packed & 0xF
    out[:, 1::2] = packed >> 4
    return out


@dataclass(frozen=True)
class W4A16(Format):
    group_size: int = 128
    sym: bool = False
    scale_dtype: str = "bfloat16"

    name: ClassVar[FormatName] = FormatName.W4A16
    weight_bits: ClassVar[int] = 4
    act_bits: ClassVar[int] = 16

    def __post_init__(self) -> None:
        if self.group_size not in GROUP_SIZES:
            raise ShapeError(f"w4a16: group size {self.group_size} not supported; use one of {GROUP_SIZES}")
        if self.scale_dtype not in ("bfloat16", "float16"):
            raise ShapeError(f"w4a16: scale dtype {self.scale_dtype!r}; use bfloat16 or float16")

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        super().check_shape(name, shape)
        k = shape[1]
        if k % self.group_size:
            fits = [g for g in GROUP_SIZES if k % g == 0]
            hint = (f"group sizes that divide it: {fits}" if fits else "no int4 group size divides it") + \
                "; or for such layers only: --k-fallback group (a smaller group that divides K), " \
                "--k-fallback w8 (int8 per channel), or --ignore (keep bf16)"
            raise ShapeError(f"{name}: K={k} is not a multiple of group size {self.group_size}; {hint}")

    def specs(self, shape: tuple[int, int]) -> list[TensorSpec]:
        n, k = shape
        g = k // self.group_size
        out = [
            TensorSpec("qweight", torch.uint8, (n, k // 2)),
            TensorSpec("scales", DTYPES[self.scale_dtype], (n, g)),
        ]
        if not self.sym:
            out.append(TensorSpec("zeros", torch.uint8, (n, g)))
        return out

    def quantize(self, w: torch.Tensor, stats=None) -> dict[str, torch.Tensor]:
        from turbopack.formats import int4_numba  # numba compiles on first import (~0.5 s): only when used

        if int4_numba.supports(w, self.scale_dtype):  # same bits, one pass (the streaming hot loop)
            return int4_numba.quantize_w4(w, self.group_size, self.sym)
        return self.reference_quantize(w)

    def reference_quantize(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """The definition (docs/formats.md), in plain torch ops."""
        rows, k = w.shape
        wg = w.float().reshape(rows, k // self.group_size, self.group_size)
        sdt = DTYPES[self.scale_dtype]
        if self.sym:
            s = (wg.abs().amax(-1) / 7).to(sdt).float()
            s = torch.where(s == 0, torch.ones_like(s), s)
            q = torch.clamp(torch.round(wg / s[..., None]), -8, 7) + 8
            z = None
        else:
            lo = wg.amin(-1).clamp(max=0)
            hi = wg.amax(-1).clamp(min=0)
            s = ((hi - lo) / 15).to(sdt).float()
            s = torch.where(s == 0, torch.ones_like(s), s)
            z = torch.clamp(torch.round(-lo / s), 0, 15)
            q = torch.clamp(torch.round(wg / s[..., None]) + z[..., None], 0, 15)
        out = {
            "qweight": pack_nibbles(q.reshape(rows, k).to(torch.uint8)),
            "scales": s.to(sdt),
        }
        if z is not None:
            out["zeros"] = z.to(torch.uint8)
        return out

    def codes(self, q: dict[str, torch.Tensor]) -> torch.Tensor:
        """uint8 codes [N, K], one per element (0..15)."""
        return unpack_nibbles(q["qweight"])

    def dequantize(self, q: dict[str, torch.Tensor]) -> torch.Tensor:
        codes = self.codes(q).float()
        n, k = codes.shape
        s = q["scales"].float()
        z = q["zeros"].float() if "zeros" in q else torch.full_like(s, 8.0)
        wg = (codes.reshape(n, -1, self.group_size) - z[..., None]) * s[..., None]
        return wg.reshape(n, k)
