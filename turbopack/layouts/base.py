"""How a quantized tensor sits in memory for one GPU architecture's kernel: the layout interface.

A layout turns the arch-neutral tensors of one linear weight (``formats``: qweight/scales/zeros
of shape [N, ...]) into packed tensors and back. ``pack`` and ``unpack`` are pure (they never
modify their input) and exact inverses: ``unpack(pack(q)) == q`` bit for bit. Every packed
tensor's first dimension is the N-tile index (N padded to ``tile_n``), so a weight can be packed
in chunks of whole N tiles and streamed to disk.
"""

from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from turbopack.formats import Format, FormatName, TensorSpec


class LayoutName(str, enum.Enum):
    """Layout names; the values are written to disk (safetensors __metadata__, manifest)."""

    W4_T16X64 = "w4_t16x64"          # int4, mma.sync family (sm75/80/86/89)
    W4_T64X64 = "w4_t64x64"          # int4, sm90 (wgmma m64, W as the register A operand)
    I8_T16X64 = "i8_t16x64"          # int8 weights for W8A16, mma.sync family
    I8_T64X64 = "i8_t64x64"          # int8 weights for W8A16, sm90
    I8_ROWMAJOR = "i8_rowmajor"      # int8 weights for W8A8 (cuBLASLt int8 via torch._int_mm)
    FP8_T16X64_UPCAST = "fp8_t16x64_upcast"  # e4m3 weights upcast to 16-bit (sm80/86: no FP8 MMA)
    FP8_ROWMAJOR = "fp8_rowmajor"    # e4m3 weights for native FP8 MMA (cuBLASLt via torch._scaled_mm)


@dataclass(frozen=True)
class Padding:
    n: int          # original N
    k: int          # original K
    n_pad: int      # N rounded up to tile_n
    k_pad: int      # K rounded up to tile_k

    def as_dict(self) -> dict[str, int]:
        return {"n": self.n, "k": self.k, "n_pad": self.n_pad, "k_pad": self.k_pad}


@dataclass(frozen=True)
class Layout(ABC):
    """A packing of one format for one family of kernels. Subclasses are frozen dataclasses."""

    name: ClassVar[LayoutName]
    format: ClassVar[tuple[FormatName, ...]]   # formats this layout can hold
    version: ClassVar[int] = 1
    tile_n: ClassVar[int]
    tile_k: ClassVar[int]

    def padding(self, shape: tuple[int, int]) -> Padding:
        n, k = shape
        return Padding(n, k, math.ceil(n / self.tile_n) * self.tile_n, math.ceil(k / self.tile_k) * self.tile_k)

    @abstractmethod
    def packed_specs(self, fmt: Format, shape: tuple[int, int]) -> list[TensorSpec]:
        """The packed tensors (suffix, dtype, shape) for a weight of original ``shape``."""

    @abstractmethod
    def pack(self, fmt: Format, q: dict[str, torch.Tensor], shape: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Arch-neutral tensors (rows = whole N tiles, or all of N) -> packed tensors."""

    @abstractmethod
    def unpack(self, fmt: Format, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Exact inverse of :meth:`pack` (padding removed)."""

    def describe(self) -> dict[str, Any]:
        return {"layout": self.name.value, "version": self.version, "tile_n": self.tile_n, "tile_k": self.tile_k}
