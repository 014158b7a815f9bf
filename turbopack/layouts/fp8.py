"""FP8 (e4m3) layouts.

``fp8_t16x64_upcast`` (sm80/86, no FP8 tensor cores): e4m3 codes tiled like i8_t16x64; the kernel
upcasts them exactly to bf16/fp16 in registers and keeps activations 16-bit, so on these archs fp8
is a W8A16-style storage format: y = fp32(sum_k x16 * float(q)) * s.
``fp8_rowmajor`` (sm89/sm90): row-major [N_pad/16, 16, K_pad] for native FP8 MMA through cuBLASLt
(torch._scaled_mm uses the [N, K] weight transposed, i.e. column-major; N, K multiples of 16), with
the format's own W8A8 math (per-token e4m3 activations).
Scales: float32 [N_pad] per channel (padded 0) or [1] per tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from turbopack.formats import FormatName
from turbopack.layouts.base import LayoutName
from turbopack.layouts.int8 import ByteLayout


@dataclass(frozen=True)
class FP8T16x64Upcast(ByteLayout):
    name: ClassVar[LayoutName] = LayoutName.FP8_T16X64_UPCAST
    format: ClassVar[tuple[FormatName, ...]] = (FormatName.FP8,)
    tile_n: ClassVar[int] = 16
    tile_k: ClassVar[int] = 64
    code_dtype: ClassVar[torch.dtype] = torch.float8_e4m3fn
    weights_only: ClassVar[bool] = True


@dataclass(frozen=True)
class FP8RowMajor(ByteLayout):
    name: ClassVar[LayoutName] = LayoutName.FP8_ROWMAJOR
    format: ClassVar[tuple[FormatName, ...]] = (FormatName.FP8,)
    tile_n: ClassVar[int] = 16
    tile_k: ClassVar[int] = 16
    code_dtype: ClassVar[torch.dtype] = torch.float8_e4m3fn
    rowmajor: ClassVar[bool] = True
