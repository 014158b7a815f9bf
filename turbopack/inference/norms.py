"""The reference model's norms and MLP activations, one class or function per family style.

``gain``/``set_gain`` give a norm's effective per-channel multiplier, so calibration can fold
scales into any norm (turbopack.packer.calibration.fold) without knowing its style.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from turbopack.inference.config import Activation, ModelConfig, NormStyle


class RMSNorm(nn.Module):
    """Llama's RMSNorm: weight * round(x_hat). ``gain``/``set_gain`` are the effective per-channel
    multiplier, so folding scales into a norm (calibration) need not know its style."""

    style = NormStyle.LLAMA

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def normed(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 and round back before the weight multiply, as HF does, so bf16 agrees.
        return self.weight * self.normed(x).to(x.dtype)

    def gain(self) -> torch.Tensor:
        return self.weight.detach().float().clone()  # a copy: set_gain must not change a gain already read

    def set_gain(self, gain: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Store ``gain`` as the weight would be stored in ``dtype``; returns the gain it now applies."""
        self.weight.copy_(gain.to(dtype).float())
        return self.gain()


class GemmaRMSNorm(RMSNorm):
    """Gemma's RMSNorm: round(x_hat * (1 + weight)) with the product in fp32 (weights are stored
    centred on 0: HF initialises them to zeros)."""

    style = NormStyle.GEMMA

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.normed(x) * (1.0 + self.weight.float())).to(x.dtype)

    def gain(self) -> torch.Tensor:
        return 1.0 + self.weight.detach().float()

    def set_gain(self, gain: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        self.weight.copy_((gain - 1.0).to(dtype).float())
        return self.gain()


NORMS: dict[NormStyle, type[RMSNorm]] = {cls.style: cls for cls in (RMSNorm, GemmaRMSNorm)}
ACTIVATIONS: dict[Activation, Callable[[torch.Tensor], torch.Tensor]] = {
    Activation.SILU: F.silu,
    Activation.GELU_TANH: lambda x: F.gelu(x, approximate="tanh"),
}


def make_norm(cfg: ModelConfig, dim: int) -> RMSNorm:
    return NORMS[cfg.norm](dim, cfg.rms_norm_eps)
