"""Int8 weights, per-output-channel symmetric: W8A16 (16-bit activations) and W8A8 (int8
activations quantized per token at run time).

Weights:      s_n = max|W[n, :]| / 127 (float32; 0 -> 1),  q = clamp(round(W / s_n), -127, 127)
Activations:  a = max|X[m, :]|,  s_m = a / 127 (0 -> 1),  qx = clamp(round(X * (127 / a)), -127, 127)
              -- vLLM's dynamic per-token int8 quantizer (dynamic_scaled_int8_quant), which serves our
              compressed-tensors W8A8 exports: it multiplies by the float32 reciprocal 127/a rather
              than dividing by s_m, and the two differ in the last bit (a code at a .5 tie) on ~0.05%
              of bf16 activations.
W8A8 output:  Y[m, n] = (sum_k qx[m, k] * q[n, k]) * s_m * s_n   (int32 accumulation)
-128 is never produced, so the range is symmetric and negation is exact.
On disk: qweight int8 [N, K], scales float32 [N].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from turbopack.formats.base import Format, FormatName, TensorSpec


def quantize_weight_rows_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 weights: returns (int8 codes, float32 scales [rows])."""
    wf = w.float()
    s = wf.abs().amax(-1) / 127
    s = torch.where(s == 0, torch.ones_like(s), s)
    q = torch.clamp(torch.round(wf / s[:, None]), -127, 127).to(torch.int8)
    return q, s


def quantize_rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token int8 activations as vLLM quantizes them: (int8 codes, float32 scales [rows]).
    |X * (127/a)| <= 127 * (1 + 2^-23), so codes stay in [-127, 127]; a zero row gets scale 1
    and codes 0 (vLLM stores scale 0 there; the product is 0 either way)."""
    xf = x.float()
    a = xf.abs().amax(-1)
    s = a / 127
    s = torch.where(s == 0, torch.ones_like(s), s)
    # a true IEEE division: torch's `127 / a` is reciprocal(a) * 127, which rounds twice
    inv = torch.where(a == 0, torch.ones_like(a), torch.full_like(a, 127.0) / a)
    q = torch.clamp(torch.round(xf * inv[:, None]), -127, 127).to(torch.int8)
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
        q, s = quantize_weight_rows_int8(w)
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
