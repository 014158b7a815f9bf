"""FP8 (float8 e4m3, "e4m3fn": max 448, no infinities) weights with per-channel or per-tensor
float32 scales; activations quantized to e4m3 per token at run time (W8A8-FP8).

Weights:     s = max|W[n, :]| / 448 per channel (or max|W| / 448 per tensor; 0 -> 1)
             q = e4m3(clamp(W / s, -448, 448))         (round to nearest even, by the cast)
Activations: s_m = max|X[m, :]| / 448,  qx = e4m3(X / s_m)
Output:      Y[m, n] = (sum_k float(qx[m, k]) * float(q[n, k])) * s_m * s_n   (float32 accumulation)
On disk: qweight float8_e4m3fn [N, K], scales float32 [N] (per channel) or [1] (per tensor).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch

from turbopack.formats.base import Format, FormatName, TensorSpec

E4M3_MAX = 448.0


def quantize_rows_fp8(x: torch.Tensor, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row e4m3 (or with a given scale): returns (float8 codes, float32 scales)."""
    xf = x.float()
    if scale is None:
        scale = xf.abs().amax(-1) / E4M3_MAX
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    s = scale if scale.numel() > 1 else scale.expand(xf.shape[0])
    q = torch.clamp(xf / s[:, None], -E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scale


@dataclass(frozen=True)
class FP8(Format):
    per_tensor: bool = False

    name: ClassVar[FormatName] = FormatName.FP8
    weight_bits: ClassVar[int] = 8
    act_bits: ClassVar[int] = 8

    @property
    def needs_tensor_stats(self) -> bool:  # type: ignore[override]
        return self.per_tensor

    def specs(self, shape: tuple[int, int]) -> list[TensorSpec]:
        n, k = shape
        scales = (
            TensorSpec("scales", torch.float32, (1,), per_row=False)
            if self.per_tensor
            else TensorSpec("scales", torch.float32, (n,))
        )
        return [TensorSpec("qweight", torch.float8_e4m3fn, (n, k)), scales]

    def tensor_stats(self, chunks: Iterable[torch.Tensor]) -> dict[str, float]:
        if not self.per_tensor:
            return {}
        return {"absmax": max(float(c.float().abs().max()) for c in chunks)}

    def quantize(self, w: torch.Tensor, stats=None) -> dict[str, torch.Tensor]:
        if not self.per_tensor:
            q, s = quantize_rows_fp8(w)
            return {"qweight": q, "scales": s}
        absmax = (stats or {}).get("absmax")
        if absmax is None:
            absmax = float(w.float().abs().max())
        s = torch.tensor([absmax / E4M3_MAX if absmax > 0 else 1.0], dtype=torch.float32, device=w.device)
        q, _ = quantize_rows_fp8(w, s)
        return {"qweight": q, "scales": s}

    def dequantize(self, q: dict[str, torch.Tensor]) -> torch.Tensor:
        s = q["scales"].float()
        return q["qweight"].float() * (s[:, None] if s.numel() > 1 else s)

    def linear(self, x: torch.Tensor, q: dict[str, torch.Tensor], bias: torch.Tensor | None = None) -> torch.Tensor:
        lead = x.shape[:-1]
        qx, sx = quantize_rows_fp8(x.reshape(-1, x.shape[-1]))
        acc = qx.float() @ q["qweight"].float().T
        s = q["scales"].float()
        y = acc * sx[:, None] * (s[None, :] if s.numel() > 1 else s)
        if bias is not None:
            y = y + bias.float()
        return y.to(x.dtype).reshape(*lead, -1)
