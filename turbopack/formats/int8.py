"""Int8 weights, per-output-channel symmetric: W8A16 (16-bit activations) and W8A8 (int8
activations quantized per token at run time).

Weights:      s_n = max|W[n, :]| / 127 (float32; 0 -> 1),  q = clamp(round(W / s_n), -127, 127)
Activations:  s_m = max|X[m, :]| / 127 (float32; 0 -> 1),  qx = clamp(round(X / s_m), -127, 127)
W8A8 output:  Y[m, n] = (sum_k qx[m, k] * q[n, k]) * s_m * s_n   (int32 accumulation)
-128 is never produced, so the range is symmetric and negation is exact.
On disk: qweight int8 [N, K], scales float32 [N].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from turbopack.formats.base import Format, FormatName, TensorSpec


def quantize_rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: returns (int8 codes, float32 scales [rows])."""
    xf = x.float()
    s = xf.abs().amax(-1) / 127
    s = torch.where(s == 0, torch.ones_like(s), s)
    q = torch.clamp(torch.round(xf / s[:, None]), -127, 127).to(torch.int8)
    return q, s


@dataclass(frozen=True)
class W8A16(Format):
    name: ClassVar[FormatName] = FormatName.W8A16
    weight_bits: ClassVar[int] = 8
    act_bits: ClassVar[int] = 16

    def specs(self, shape: tuple[int, int]) -> list[TensorSpec]:
        n, k = shape
        return [TensorSpec("qweight", torch.int8, (n, k)), TensorSpec("scales", torch.float32, (n,))]

    def quantize(self, w: torch.Tensor, stats=None) -> dict[str, torch.Tensor]:
        q, s = quantize_rows_int8(w)
        return {"qweight": q, "scales": s}

    def dequantize(self, q: dict[str, torch.Tensor]) -> torch.Tensor:
        return q["qweight"].float() * q["scales"].float()[:, None]


@dataclass(frozen=True)
class W8A8(W8A16):
    name: ClassVar[FormatName] = FormatName.W8A8
    act_bits: ClassVar[int] = 8

    def linear(self, x: torch.Tensor, q: dict[str, torch.Tensor], bias: torch.Tensor | None = None) -> torch.Tensor:
        lead = x.shape[:-1]
        qx, sx = quantize_rows_int8(x.reshape(-1, x.shape[-1]))
        # int32 accumulation is exact; float64 matmul of int8 values is exact too for K < 2^37.
        acc = qx.double() @ q["qweight"].double().T
        y = acc.float() * sx[:, None] * q["scales"].float()[None, :]
        if bias is not None:
            y = y + bias.float()
        return y.to(x.dtype).reshape(*lead, -1)
