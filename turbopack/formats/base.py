"""What a quantized weight is: the format interface and the on-disk tensors it produces.

A linear weight ``W`` of shape ``[N, K]`` (out_features, in_features; rows are output channels,
K is the reduction dimension) named ``<prefix>.weight`` becomes a few tensors named
``<prefix>.<suffix>`` (``qweight``, ``scales`` and, for asymmetric int4, ``zeros``). Every format
quantizes rows independently, so a weight can be processed in row chunks and streamed to disk;
the only tensor-wide statistic (FP8's per-tensor scale) is computed in a first pass through
:meth:`Format.tensor_stats`.
"""

from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from turbopack.errors import BadTensorError, ShapeError


class FormatName(str, enum.Enum):
    """Format names; the values are the strings written to disk."""

    W4A16 = "w4a16"
    W8A16 = "w8a16"
    W8A8 = "w8a8"
    FP8 = "fp8"
    NVFP4 = "nvfp4"


@dataclass(frozen=True)
class TensorSpec:
    """One on-disk tensor of a quantized weight.

    ``per_row``: the first dimension is N (the weight's rows), so row chunk ``[r0:r1]`` of the
    weight produces rows ``[r0:r1]`` of this tensor. Otherwise the tensor is tensor-wide.
    """

    suffix: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    per_row: bool = True

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_finite(name: str, w: torch.Tensor) -> None:
    if not bool(torch.isfinite(w).all()):
        bad = int((~torch.isfinite(w)).sum())
        raise BadTensorError(
            f"{name}: {bad} NaN/Inf value(s); fix or re-export the source checkpoint "
            f"(or skip this tensor with --ignore)"
        )


@dataclass(frozen=True)
class Format(ABC):
    """A quantization format. Subclasses are frozen dataclasses whose fields are its parameters."""

    name: ClassVar[FormatName]
    weight_bits: ClassVar[int]
    act_bits: ClassVar[int]
    #: true when quantize() needs tensor_stats() of the whole weight first (a second pass)
    needs_tensor_stats: ClassVar[bool] = False
    #: true when those statistics are taken over the weights that serving engines fuse (q|k|v,
    #: gate|up), so that the fused ones share them (NVFP4's global scale: vLLM needs one per fused
    #: linear, and llm-compressor writes it so)
    fused_tensor_stats: ClassVar[bool] = False

    # -- description -------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """JSON-able parameters, written to config.json / the manifest next to ``format``."""
        return {"format": self.name.value, **asdict(self)}

    def describe(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in asdict(self).items())
        return f"{self.name.value}({extra})"

    @abstractmethod
    def specs(self, shape: tuple[int, int]) -> list[TensorSpec]:
        """The on-disk tensors for a weight of ``shape`` = (N, K)."""

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if len(shape) != 2 or min(shape) < 1:
            raise ShapeError(f"{name}: expected a 2-D linear weight [N, K], got shape {list(shape)}")

    def bits_per_weight(self, shape: tuple[int, int]) -> float:
        return 8 * sum(s.nbytes for s in self.specs(shape)) / (shape[0] * shape[1])

    # -- math --------------------------------------------------------------------------------
    def tensor_stats(self, chunks: Iterable[torch.Tensor]) -> dict[str, float]:
        """First pass over row chunks for tensor-wide statistics (most formats need none)."""
        return {}

    @abstractmethod
    def quantize(self, w: torch.Tensor, stats: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
        """Quantize rows ``w`` ([rows, K], any float dtype) -> {suffix: tensor} per :meth:`specs`."""

    @abstractmethod
    def dequantize(self, q: dict[str, torch.Tensor]) -> torch.Tensor:
        """The float32 weight [N, K] that the quantized tensors stand for."""

    def linear(self, x: torch.Tensor, q: dict[str, torch.Tensor], bias: torch.Tensor | None = None) -> torch.Tensor:
        """Reference ``x @ W.T + bias`` with this format's activation handling (16-bit: none)."""
        w = self.dequantize(q).to(x.dtype)
        return torch.nn.functional.linear(x, w, bias)
