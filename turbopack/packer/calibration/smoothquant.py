"""SmoothQuant (Xiao et al., 2022) for formats that quantize activations per token (w8a8, fp8).

A few input channels carry outliers 10-100x the rest; per-token activation quantization then
spends its range on them and rounds every other channel coarsely. Dividing channel j of the
activation by ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` (and multiplying the weight column by
it) moves part of that range into the weights, which are quantized per output channel and take it
well. The division is folded into the op producing the activation (fold.py), so the float model
is unchanged, along the family's scale groups but v -> o: input_layernorm -> q/k/v, the MLP's
input norm -> gate/up, and up -> down (the down_proj input is where Llama's largest outliers
live; up_proj's rows absorb it exactly).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from turbopack.packer.calibration.awq import fold_group
from turbopack.packer.calibration.capture import BlockJob
from turbopack.packer.families import linear_spec


@dataclass(frozen=True)
class SmoothConfig:
    alpha: float = 0.5
    down_proj: bool = True  # also smooth up -> down

    def params(self) -> dict:
        return asdict(self)


def smooth_scales(x_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max_n |W[n, j]|^(1 - alpha) over all consumers; 1 where a side is 0."""
    w_absmax = torch.cat([w.float() for w in weights]).abs().amax(0)
    s = x_absmax.float().clamp(min=1e-5).pow(alpha) / w_absmax.clamp(min=1e-5).pow(1 - alpha)
    dead = (x_absmax == 0) | (w_absmax == 0)
    return torch.where(dead, torch.ones_like(s), s.clamp(min=1e-5))


@torch.no_grad()
def smooth_block(job: BlockJob, cfg: SmoothConfig) -> None:
    """Smooth the block in place (float weights and norms); quantization comes after."""
    # the family's scale groups but v -> o; with down_proj=False, also not the MLP's inner one
    groups = [g for g in job.groups() if g.smooth and (cfg.down_proj or linear_spec(g.producer) is None)]
    taps = {g.consumers[0]: job.runner.stats_tap(keep=False) for g in groups}
    job.runner.capture(job.block, job.x, taps)
    for g in groups:
        linears = [job.linear(c) for c in g.consumers]
        s = smooth_scales(taps[g.consumers[0]].absmax, [lin.weight for lin in linears], cfg.alpha)
        fold_group(job, g, s, f"SmoothQuant (alpha={cfg.alpha})")
        for c in g.consumers:
            if c not in job.quantize:
                job.modified[c + ".weight"] = "kept in float, scaled by SmoothQuant (folded)"
