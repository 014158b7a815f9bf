"""SmoothQuant (Xiao et al., 2022) for formats that quantize activations per token (w8a8, fp8).

A few input channels carry outliers 10-100x the rest; per-token activation quantization then
spends its range on them and rounds every other channel coarsely. Dividing channel j of the
activation by ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` (and multiplying the weight column by
it) moves part of that range into the weights, which are quantized per output channel and take it
well. The division is folded into the op producing the activation (fold.py), so the float model
is unchanged: input_layernorm -> q/k/v, post_attention_layernorm -> gate/up, and up -> down
(the down_proj input is where Llama's largest outliers live; up_proj's rows absorb it exactly).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from turbopack.packer.calibration.capture import DOWN, GATE, UP, BlockJob, K, Q, V
from turbopack.packer.calibration.fold import fold_into_linear, fold_into_norm

#: (producer, consumers, the consumer tapped for the shared input)
MAPPINGS = (
    ("input_layernorm", (Q, K, V), Q),
    ("post_attention_layernorm", (GATE, UP), GATE),
    (UP, (DOWN,), DOWN),
)


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
    mappings = [m for m in MAPPINGS if cfg.down_proj or m[0] != UP]
    taps = {tap: job.runner.stats_tap(keep=False) for _, _, tap in mappings}
    job.runner.capture(job.block, job.x, taps)
    for producer, consumers, tap in mappings:
        linears = [job.linear(c) for c in consumers]
        s = smooth_scales(taps[tap].absmax, [lin.weight for lin in linears], cfg.alpha)
        if producer.endswith("layernorm"):
            fold_into_norm(job.block.get_submodule(producer), linears, s, job.store_dtype)
            job.modified[producer + ".weight"] = f"divided by SmoothQuant scales (alpha={cfg.alpha}, folded)"
        else:
            prev = job.linear(producer)
            fold_into_linear(prev, linears[0], s)
            if prev.bias is not None:
                job.modified[producer + ".bias"] = "divided by SmoothQuant scales of the next linear (folded)"
            if producer not in job.quantize:
                job.modified[producer + ".weight"] = "kept in float, divided by SmoothQuant scales (folded)"
        for c in consumers:
            if c not in job.quantize:
                job.modified[c + ".weight"] = "kept in float, scaled by SmoothQuant (folded)"
