"""The residual add and the next RMSNorm folded into two decode linears' stores (csrc/rows_store.cuh
``Fold``), so a decode layer needs no add_rmsnorm launch between o_proj and gate|up, nor between
down and the next layer's q|k|v.

With r = round(y + residual) the new residual (y the producer's output, rounded as stored),
RMSNorm's input to the next linear is round(round(r / rms(r)) * w) (Llama's norm style,
``kernels.glue``). The producer's store writes r, z = round(r * w) in y's place, and per CTA of
16 rows the fp32 sum of r^2 (``ss`` [M, parts]); the consumer reads z as its x and scales each
token's sums by 1 / sqrt(sum ss / K + eps) before its bias, row scale and activation. So the
consumer computes W (r * w) / rms(r): the norm's math with one rounding where add_rmsnorm has two.
A ``Folded`` carries what the consumer needs, and the norm itself for a consumer that cannot
read z (``plain``: one add_rmsnorm launch, as without the fold).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from turbopack.inference.kernels.cuda_build import ptr

#: a consumer's partials per token at most (csrc/rows_store.cuh kFoldSmem: 32 KiB for 16 tokens)
FOLD_PARTS_MAX = 512


@dataclass(frozen=True)
class FoldArgs:
    """csrc/rows_store.cuh ``Fold``, as the decode entry points take it (cuda_w4, cuda_w8): a producer's
    residual, norm weight and outputs (r_out [M, N], ss [M, NP / 16] fp32; y becomes the norm's z),
    or a consumer's partials ss_in [M, parts] and eps (x being a producer's z)."""

    res: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    r_out: torch.Tensor | None = None
    ss: torch.Tensor | None = None
    ss_in: torch.Tensor | None = None
    eps: float = 0.0

    def c_args(self) -> tuple:
        parts = 0 if self.ss_in is None else self.ss_in.shape[1]
        return (*map(ptr, (self.res, self.weight, self.r_out, self.ss, self.ss_in)), float(self.eps), parts)


NO_FOLD = FoldArgs()


@dataclass(frozen=True)
class Folded:
    """A producer's output under a fold: z [..., N] (the consumer's x), the new residual [..., N],
    ss [M, parts] fp32 and the norm (weight, eps, style) it folded."""

    z: torch.Tensor
    residual: torch.Tensor
    ss: torch.Tensor
    norm: object

    def plain(self) -> torch.Tensor:
        """The norm's output itself, for a consumer that cannot read z: add_rmsnorm of the new
        residual alone."""
        from turbopack.inference.kernels.glue import add_rmsnorm

        return add_rmsnorm(self.residual, None, self.norm)[0]

    @property
    def shape(self) -> torch.Size:
        return self.z.shape


def reference(y: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                        torch.Tensor]:
    """The producer's store in torch (the kernels' contract, for tests): (z, r, ss) of y [M, N]
    (already rounded to its dtype), ss [M, N / 16] fp32 per 16 rows."""
    r = (y.float() + residual.float()).to(y.dtype)
    z = (r.float() * weight.float()).to(y.dtype)
    ss = r.float().square().reshape(r.shape[0], -1, 16).sum(-1)
    return z, r, ss


def inv_rms(ss: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    """The consumer's per-token scale [M] from the partials ss [M, parts]."""
    return 1.0 / torch.sqrt(ss.sum(-1) / k + eps)
