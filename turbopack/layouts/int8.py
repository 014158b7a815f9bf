"""One-byte-code layouts (int8 here, float8 e4m3 in fp8.py) and the int8 ones.

``i8_t16x64`` / ``i8_t64x64`` (w8a16): codes tiled [NT, K_pad/64, TN, 64], each tile one
contiguous TN*64-byte block, per-channel float32 scales [N_pad] applied once in the epilogue.
``i8_rowmajor`` (w8a8): plain row-major [N_pad/8, 8, K_pad] for cuBLASLt int8 (torch._int_mm uses
the [N, K] weight transposed; N and K multiples of 8). Padding is zero, padded scales are 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from turbopack.errors import ShapeError
from turbopack.formats import Format, FormatName, TensorSpec
from turbopack.layouts.base import Layout, LayoutName, Padding, check_packed, check_rows, from_tiles, pad2d, to_tiles


@dataclass(frozen=True)
class ByteLayout(Layout):
    """Codes of one byte each, tiled (TN x TK blocks) or row-major (``rowmajor``: one K tile
    spanning all of K_pad, the [NT, KT=1, TN, K_pad] tiling with the KT axis dropped)."""

    code_dtype: ClassVar[torch.dtype]
    rowmajor: ClassVar[bool] = False

    def qweight_shape(self, pad: Padding) -> tuple[int, ...]:
        nt = pad.n_pad // self.tile_n
        if self.rowmajor:
            return (nt, self.tile_n, pad.k_pad)
        return (nt, pad.k_pad // self.tile_k, self.tile_n, self.tile_k)

    def packed_specs(self, fmt: Format, shape: tuple[int, int]) -> list[TensorSpec]:
        self.check_format(fmt)
        fmt.check_shape(f"{self.name.value} weight", shape)
        pad = self.padding(shape)
        per_tensor = bool(getattr(fmt, "per_tensor", False))
        scales = (
            TensorSpec("scales", torch.float32, (1,), per_row=False)
            if per_tensor
            else TensorSpec("scales", torch.float32, (pad.n_pad,))
        )
        return [TensorSpec("qweight", self.code_dtype, self.qweight_shape(pad)), scales]

    def pack(self, fmt: Format, q: dict[str, torch.Tensor], shape: tuple[int, int]) -> dict[str, torch.Tensor]:
        specs = self.packed_specs(fmt, shape)
        where = f"{self.name.value} pack"
        pad = self.padding(shape)
        qweight, scales = q["qweight"], q["scales"]
        rows = check_rows(f"{where}: qweight", qweight, shape, shape[1])
        if qweight.dtype != self.code_dtype or scales.dtype != torch.float32:
            raise ShapeError(
                f"{where}: expected {self.code_dtype} qweight and float32 scales, got {qweight.dtype} / {scales.dtype}"
            )
        rows_pad = -(-rows // self.tile_n) * self.tile_n
        codes = pad2d(qweight.view(torch.uint8), rows_pad, pad.k_pad)
        if self.rowmajor:
            tiled = codes.reshape(rows_pad // self.tile_n, self.tile_n, pad.k_pad)
        else:
            tiled = to_tiles(codes, self.tile_n, self.tile_k)
        if specs[1].per_row:
            if tuple(scales.shape) != (rows,):
                raise ShapeError(f"{where}: scales {list(scales.shape)}, expected [{rows}] (one per row of qweight)")
            packed_scales = pad2d(scales[:, None], rows_pad, 1)[:, 0].contiguous()
        else:
            if tuple(scales.shape) != (1,):
                raise ShapeError(f"{where}: per-tensor scales {list(scales.shape)}, expected [1]")
            packed_scales = scales.clone()
        return {"qweight": tiled.view(self.code_dtype), "scales": packed_scales}

    def unpack(self, fmt: Format, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> dict[str, torch.Tensor]:
        where = f"{self.name.value} unpack"
        specs = self.packed_specs(fmt, shape)
        for spec in specs:
            check_packed(f"{where}: {spec.suffix}", packed.get(spec.suffix), spec)
        n, k = shape
        pad = self.padding(shape)
        codes = packed["qweight"].view(torch.uint8)
        flat = codes.reshape(pad.n_pad, pad.k_pad) if self.rowmajor else from_tiles(codes)
        qweight = flat[:n, :k].clone(memory_format=torch.contiguous_format).view(self.code_dtype)
        scales = packed["scales"][:n].clone() if specs[1].per_row else packed["scales"].clone()
        return {"qweight": qweight, "scales": scales}


@dataclass(frozen=True)
class I8T16x64(ByteLayout):
    """w8a16 for the mma.sync family (sm75/80/86/89)."""

    name: ClassVar[LayoutName] = LayoutName.I8_T16X64
    format: ClassVar[tuple[FormatName, ...]] = (FormatName.W8A16,)
    tile_n: ClassVar[int] = 16
    tile_k: ClassVar[int] = 64
    code_dtype: ClassVar[torch.dtype] = torch.int8


@dataclass(frozen=True)
class I8T64x64(I8T16x64):
    """w8a16 for sm90 (64 rows = wgmma's M)."""

    name: ClassVar[LayoutName] = LayoutName.I8_T64X64
    tile_n: ClassVar[int] = 64


@dataclass(frozen=True)
class I8RowMajor(ByteLayout):
    """w8a8 through cuBLASLt int8 (torch._int_mm): every arch sm75+."""

    name: ClassVar[LayoutName] = LayoutName.I8_ROWMAJOR
    format: ClassVar[tuple[FormatName, ...]] = (FormatName.W8A8,)
    tile_n: ClassVar[int] = 8
    tile_k: ClassVar[int] = 16
    code_dtype: ClassVar[torch.dtype] = torch.int8
    rowmajor: ClassVar[bool] = True
