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

from turbopack.errors import ShapeError, TurbopackError
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
    NVFP4_T16X64 = "nvfp4_t16x64"    # NVFP4 (e2m1 + e4m3 per 16) decoded to 16-bit in registers (sm80+)


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

    # -- helpers shared by every layout (additions to the interface; nothing above changed) ------
    #: true when the kernel keeps activations 16-bit even though the format quantizes them
    #: (fp8 upcast on archs without FP8 MMA); the reference is then the weights-only linear.
    weights_only: ClassVar[bool] = False

    def check_format(self, fmt: Format) -> None:
        if fmt.name not in self.format:
            held = ", ".join(f.value for f in self.format)
            raise TurbopackError(
                f"layout {self.name.value} holds {held}, not {fmt.name.value}; pick a layout for {fmt.name.value} "
                "(turbopack.layouts.select)"
            )

    def row_chunks(self, shape: tuple[int, int], max_rows: int) -> list[tuple[int, int]]:
        """Row ranges [r0, r1) of the weight to pack one at a time: whole N tiles (the last one
        may be partial); concatenating the packed chunks along dim 0 gives the whole-weight
        tensors (tensors whose spec is not ``per_row`` are the same in every chunk)."""
        n = shape[0]
        step = max(self.tile_n, max_rows // self.tile_n * self.tile_n)
        return [(r0, min(r0 + step, n)) for r0 in range(0, n, step)]

    def n_tiles(self, shape: tuple[int, int]) -> int:
        return self.padding(shape).n_pad // self.tile_n


def check_rows(where: str, t: torch.Tensor, shape: tuple[int, int], cols: int | None) -> int:
    """The number of weight rows a (chunk of an) arch-neutral tensor holds, validated."""
    n = shape[0]
    if t.dim() < 1 or t.shape[0] > n or (cols is not None and (t.dim() != 2 or t.shape[1] != cols)):
        want = f"[rows <= {n}, {cols}]" if cols is not None else f"[rows <= {n}]"
        raise ShapeError(f"{where}: got shape {list(t.shape)}, expected {want} for a weight of shape {list(shape)}")
    return int(t.shape[0])


def check_packed(where: str, t: torch.Tensor | None, spec: TensorSpec) -> None:
    if t is None:
        raise ShapeError(f"{where}: packed tensor missing; expected {spec.dtype} {list(spec.shape)}")
    if tuple(t.shape) != spec.shape or t.dtype != spec.dtype:
        raise ShapeError(
            f"{where}: packed tensor is {t.dtype} {list(t.shape)}, expected {spec.dtype} {list(spec.shape)}; was it "
            "packed for another shape or layout?"
        )


def pad2d(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Zero-pad a 2-D tensor to [rows, cols]; always a new tensor (the input is never modified)."""
    if tuple(t.shape) == (rows, cols):
        return t.clone(memory_format=torch.contiguous_format)
    out = torch.zeros(rows, cols, dtype=t.dtype)
    out[: t.shape[0], : t.shape[1]] = t
    return out


def to_tiles(t: torch.Tensor, tile_rows: int, tile_cols: int) -> torch.Tensor:
    """[R, C] (multiples of the tile) -> [R/tr, C/tc, tr, tc], each tile one contiguous block."""
    r, c = t.shape
    return t.reshape(r // tile_rows, tile_rows, c // tile_cols, tile_cols).transpose(1, 2).contiguous()


def from_tiles(t: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_tiles`."""
    nt, ct, tr, tc = t.shape
    return t.transpose(1, 2).reshape(nt * tr, ct * tc)
