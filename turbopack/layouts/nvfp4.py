"""``nvfp4_t16x64``: NVFP4 weights for the 16-bit-activation Triton kernels (every arch sm80+).

The arch-neutral tensors, tiled 16 x 64 (docs/layouts.md):

  qweight  uint8 [NT, K_pad/64, 16, 32]: tile row r of tile (tn, tk) is bytes [32 tk, 32 tk + 32) of
           the format's row n = 16 tn + r, unchanged (read as 8 little-endian int32 words, word j
           holds k = 64 tk + 8j + e in nibble e: the natural order, no interleave)
  scales   float8_e4m3fn [NT, K_pad/64, 16, 4]: byte c = the e4m3 scale of block 4 tk + c of row n
           (one int32 word per tile row: the four scales of its 64 codes)
  global_scale  float32 [1], as is

Padded codes and scales are 0, so padded weights are exactly 0. No byte is transformed, only
moved: the kernel's decode of a nibble is cheap without an interleave (the code's bits go straight
into a float16's sign, exponent and mantissa fields), and the arch-neutral order is also the one
compressed-tensors and vLLM use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from turbopack.errors import ShapeError
from turbopack.formats import Format, FormatName, TensorSpec
from turbopack.layouts.base import Layout, LayoutName, check_packed, check_rows, from_tiles, pad2d, to_tiles

#: bytes of codes and of scales in one 64-wide tile row
CODE_BYTES, SCALE_BYTES = 32, 4


@dataclass(frozen=True)
class NVFP4T16x64(Layout):
    name: ClassVar[LayoutName] = LayoutName.NVFP4_T16X64
    format: ClassVar[tuple[FormatName, ...]] = (FormatName.NVFP4,)
    tile_n: ClassVar[int] = 16
    tile_k: ClassVar[int] = 64

    def packed_specs(self, fmt: Format, shape: tuple[int, int]) -> list[TensorSpec]:
        self.check_format(fmt)
        fmt.check_shape(f"{self.name.value} weight", shape)
        pad = self.padding(shape)
        nt, kt = pad.n_pad // self.tile_n, pad.k_pad // self.tile_k
        return [
            TensorSpec("qweight", torch.uint8, (nt, kt, self.tile_n, CODE_BYTES)),
            TensorSpec("scales", torch.float8_e4m3fn, (nt, kt, self.tile_n, SCALE_BYTES)),
            TensorSpec("global_scale", torch.float32, (1,), per_row=False),
        ]

    def pack(self, fmt: Format, q: dict[str, torch.Tensor], shape: tuple[int, int]) -> dict[str, torch.Tensor]:
        self.packed_specs(fmt, shape)
        where = f"{self.name.value} pack"
        n, k = shape
        pad = self.padding(shape)
        rows = check_rows(f"{where}: qweight", q["qweight"], shape, k // 2)
        check_rows(f"{where}: scales", q["scales"], shape, k // 16)
        if q["qweight"].dtype != torch.uint8 or q["scales"].dtype != torch.float8_e4m3fn:
            raise ShapeError(f"{where}: expected uint8 qweight and float8_e4m3fn scales, got "
                             f"{q['qweight'].dtype} / {q['scales'].dtype}")
        if q["scales"].shape[0] != rows or tuple(q["global_scale"].shape) != (1,):
            raise ShapeError(f"{where}: scales {list(q['scales'].shape)} / global_scale "
                             f"{list(q['global_scale'].shape)} do not fit {rows} rows of qweight and one global scale")
        rows_pad = -(-rows // self.tile_n) * self.tile_n
        codes = pad2d(q["qweight"], rows_pad, pad.k_pad // 2)
        scales = pad2d(q["scales"].view(torch.uint8), rows_pad, pad.k_pad // 16)
        return {
            "qweight": to_tiles(codes, self.tile_n, CODE_BYTES),
            "scales": to_tiles(scales, self.tile_n, SCALE_BYTES).view(torch.float8_e4m3fn),
            "global_scale": q["global_scale"].float().clone(),
        }

    def unpack(self, fmt: Format, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> dict[str, torch.Tensor]:
        for spec in self.packed_specs(fmt, shape):
            check_packed(f"{self.name.value} unpack: {spec.suffix}", packed.get(spec.suffix), spec)
        n, k = shape
        codes = from_tiles(packed["qweight"])[:n, : k // 2]
        scales = from_tiles(packed["scales"].view(torch.uint8))[:n, : k // 16]
        return {
            "qweight": codes.clone(memory_format=torch.contiguous_format),
            "scales": scales.clone(memory_format=torch.contiguous_format).view(torch.float8_e4m3fn),
            "global_scale": packed["global_scale"].clone(),
        }
