"""NVFP4: 4-bit float (e2m1) weights, one e4m3 scale per 16 consecutive input-dim weights, one
float32 global scale per tensor; 16-bit activations (weight-only, compressed-tensors' NVFP4A16).

The convention is compressed-tensors' (``nvfp4-pack-quantized``, which vLLM and llm-compressor
use; NVIDIA ModelOpt stores ``weight_scale_2 = 1 / global``), op for op in float32:

  e2m1 code:  bit 3 = sign, bits 0-2 = magnitude index into (0, 0.5, 1, 1.5, 2, 3, 4, 6)
  global:     gs  = 2688 / max(amax(|W|), tiny)   (2688 = 448 * 6; torch's scalar / tensor, i.e.
                    fp32(fp32(1 / amax) * 2688); not finite -> 1); when quantizing a model, amax is
                    taken over the linears that engines fuse (q|k|v, gate|up), which then share gs
  block b:    s_b = e4m3(clamp(gs * fp32(amax(|W_b|) / 6), -448, 448))   (RNE);  s_b == 0 -> 0.125
  codes:      x   = W / fp32(s_b / gs),  clamped to [-6, 6], rounded to the nearest e2m1 value,
                    ties to the even code (0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2,
                    3.5 -> 4, 5 -> 4); sign bit set iff x < 0 (so a small negative is code 8, -0)
  dequant:    W'  = e2m1(q) * fp32(s_b / gs)

On disk (our names; compressed-tensors' in brackets, byte-identical): qweight [weight_packed] uint8
[N, K/2], byte j of a row = code of column 2j in bits 0-3, column 2j+1 in bits 4-7; scales
[weight_scale] float8_e4m3fn [N, K/16]; global_scale [weight_global_scale] float32 [1].
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch

from turbopack.errors import ShapeError
from turbopack.formats.base import Format, FormatName, TensorSpec
from turbopack.formats.int4 import pack_nibbles, unpack_nibbles

BLOCK = 16
E2M1_MAX = 6.0
E4M3_MAX = 448.0
#: value of magnitude index 0..7 (the code's bits 0-2); bit 3 is the sign
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
#: |x| thresholds of round-to-nearest-even onto E2M1_VALUES: index = number passed, where a tie
#: goes to the even index (">" passes a tie: up to the even index; ">=" also passes it)
_TIE_UP = (False, True, False, True, False, True, False)
_THRESHOLDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
#: compressed-tensors' replacement for an e4m3 block scale that rounds to 0 (its e4m3 "eps")
ZERO_SCALE = 0.125


def e2m1_table(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Value of each of the 16 codes (code 8 is -0.0)."""
    mags = torch.tensor(E2M1_VALUES, dtype=dtype)
    return torch.cat([mags, -mags])


def global_scale(absmax: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """gs [1] float32 for a tensor whose max |w| is ``absmax``, computed as compressed-tensors
    computes it (a python scalar over a float32 tensor: one reciprocal, one multiply)."""
    a = torch.tensor([absmax], dtype=torch.float32, device=device).clamp(min=torch.finfo(torch.float32).tiny)
    gs = E4M3_MAX * E2M1_MAX / a
    return torch.nan_to_num(gs, nan=1.0, posinf=1.0, neginf=1.0)


def block_scales(w: torch.Tensor, gs: torch.Tensor) -> torch.Tensor:
    """e4m3 scales [rows, K/16] (as float8_e4m3fn) of float32 rows ``w``."""
    amax = w.reshape(w.shape[0], -1, BLOCK).abs().amax(-1)
    s = torch.clamp(gs * (amax / torch.tensor(E2M1_MAX)), -E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return torch.where(s.float() == 0, torch.tensor(ZERO_SCALE), s.float()).to(torch.float8_e4m3fn)


def e2m1_codes(x: torch.Tensor) -> torch.Tensor:
    """float32 values -> uint8 codes 0..15 by round-to-nearest-even onto the e2m1 grid (x is
    clamped to [-6, 6] first); the sign bit is set for x < 0 only."""
    a = torch.clamp(x, -E2M1_MAX, E2M1_MAX).abs()
    idx = torch.zeros_like(x, dtype=torch.uint8)
    for t, tie_up in zip(_THRESHOLDS, _TIE_UP):
        idx += (a >= t if tie_up else a > t).to(torch.uint8)
    return idx | ((x < 0).to(torch.uint8) << 3)


def effective_scales(scales: torch.Tensor, gs: torch.Tensor) -> torch.Tensor:
    """fp32(s / gs) per block: the one float32 factor a code's value is multiplied by."""
    return scales.float() / gs.float()


@dataclass(frozen=True)
class NVFP4(Format):
    name: ClassVar[FormatName] = FormatName.NVFP4
    weight_bits: ClassVar[int] = 4
    act_bits: ClassVar[int] = 16
    needs_tensor_stats: ClassVar[bool] = True
    fused_tensor_stats: ClassVar[bool] = True
    #: K columns per e4m3 scale (fixed by the format; also what TP and ragged-K checks read)
    group_size: ClassVar[int] = BLOCK

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        super().check_shape(name, shape)
        if shape[1] % BLOCK:
            raise ShapeError(
                f"{name}: K={shape[1]} is not a multiple of 16, NVFP4's scale block; keep this layer unquantized "
                "(--ignore) or use w8a16"
            )

    def specs(self, shape: tuple[int, int]) -> list[TensorSpec]:
        n, k = shape
        return [
            TensorSpec("qweight", torch.uint8, (n, k // 2)),
            TensorSpec("scales", torch.float8_e4m3fn, (n, k // BLOCK)),
            TensorSpec("global_scale", torch.float32, (1,), per_row=False),
        ]

    def tensor_stats(self, chunks: Iterable[torch.Tensor]) -> dict[str, float]:
        return {"absmax": max(float(c.float().abs().max()) for c in chunks)}

    def quantize(self, w: torch.Tensor, stats: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
        """Rows ``w``; ``stats["absmax"]`` is the whole tensor's max |w| (without it: these rows')."""
        wf = w.float()
        absmax = (stats or {}).get("absmax")
        gs = global_scale(float(wf.abs().max()) if absmax is None else absmax, wf.device)
        s = block_scales(wf, gs)
        x = wf.reshape(wf.shape[0], -1, BLOCK) / effective_scales(s, gs)[..., None]
        return {"qweight": pack_nibbles(e2m1_codes(x).reshape(wf.shape)), "scales": s, "global_scale": gs}

    def codes(self, q: dict[str, torch.Tensor]) -> torch.Tensor:
        """uint8 codes [N, K], one per element (0..15)."""
        return unpack_nibbles(q["qweight"])

    def dequantize(self, q: dict[str, torch.Tensor]) -> torch.Tensor:
        codes = self.codes(q)
        n, k = codes.shape
        v = e2m1_table().to(codes.device)[codes.long()].reshape(n, -1, BLOCK)
        return (v * effective_scales(q["scales"], q["global_scale"])[..., None]).reshape(n, k)
