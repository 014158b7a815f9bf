"""AWQ (Lin et al., 2023): protect the weights that meet large activations by scaling them up
before rounding, and fold the inverse scale into the op that produces the activation.

Per group of linears sharing an input (q/k/v after input_layernorm; o after v; gate/up after
post_attention_layernorm; down after up) we try ``s = mean|x|^a`` for ``a`` on a grid in [0, 1)
(``a = 0`` is plain RTN), normalised to geometric mean 1, and keep the one whose fake-quantized
weights ``Q(W diag(s)) / s`` give the lowest output error on a fixed sample of calibration tokens.
The scale is folded (fold.py) so the float model is unchanged; then, optionally, each weight's
per-group clipping range is searched the same way (not for q/k, whose output error is not what
attention sees). Finally the format's own RTN is applied to the scaled, clipped weights, so the
stored tensors are ordinary RTN tensors of a different weight.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch

from turbopack.packer.calibration.capture import DOWN, GATE, K, O, Q, UP, V, BlockJob
from turbopack.packer.calibration.fold import fold_into_linear, fold_into_norm, gqa_expand, gqa_reduce
from turbopack.packer.calibration.grid import Grid, grid_for

#: (producer, consumers, the consumer tapped for the shared input)
GROUPS = (
    ("input_layernorm", (Q, K, V), Q),
    (V, (O,), O),
    ("post_attention_layernorm", (GATE, UP), GATE),
    (UP, (DOWN,), DOWN),
)
NO_CLIP = (Q, K)
CLIP_BYTES = 256 << 20


@dataclass(frozen=True)
class AWQConfig:
    n_grid: int = 20
    clip: bool = True
    max_shrink: float = 0.5
    search_tokens: int = 8192
    clip_tokens: int = 512

    def params(self) -> dict:
        return asdict(self)


@torch.no_grad()
def search_scale(x_mean: torch.Tensor, x: torch.Tensor, weights: list[torch.Tensor], grid: Grid, n_grid: int = 20,
                 expand: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The per-channel scale minimising ||X W^T - X (Q(W s) / s)^T|| over the consumers ``weights``.
    ``expand`` maps a scale over the producer's channels to the consumers' input channels."""
    w = torch.cat([t.float() for t in weights])
    ref = x @ w.T
    best, best_s = float("inf"), torch.ones_like(x_mean)
    for r in range(n_grid):
        s = x_mean.clamp(min=1e-4).pow(r / n_grid)
        s = s / (s.max() * s.min()).sqrt()
        se = s if expand is None else expand(s)
        loss = float((x @ (grid.fake(w * se) / se).T - ref).pow(2).mean())
        if loss < best:
            best, best_s = loss, s
    return best_s


@torch.no_grad()
def search_clip(w: torch.Tensor, x: torch.Tensor, grid: Grid, n_grid: int = 20, max_shrink: float = 0.5) -> torch.Tensor:
    """``w`` with each quantization group clamped to the shrunk range [-m, m] that minimises the
    group's output error on tokens ``x`` [T, K] (m = max|w_g| * (1 - i / n_grid))."""
    n, k = w.shape
    g = grid.group_of(k)
    xg = x.float().reshape(1, x.shape[0], k // g, g)
    out = torch.empty_like(w, dtype=torch.float32)
    rows = max(1, CLIP_BYTES // (4 * x.shape[0] * k))
    for r0 in range(0, n, rows):
        wg = w[r0:r0 + rows].float().reshape(-1, 1, k // g, g)
        ref = (xg * wg).sum(-1)
        org_max = wg.abs().amax(-1, keepdim=True)
        best_max, min_err = org_max.clone(), torch.full_like(ref[:, :1], float("inf"))
        for i in range(int(max_shrink * n_grid)):
            m = org_max * (1 - i / n_grid)
            q = grid.fake(torch.clamp(wg, -m, m).reshape(-1, k)).reshape(wg.shape)
            err = ((xg * q).sum(-1) - ref).pow(2).mean(1, keepdim=True)
            better = err < min_err
            min_err = torch.where(better, err, min_err)
            best_max = torch.where(better[..., None], m, best_max)
        out[r0:r0 + rows] = torch.clamp(wg, -best_max, best_max).reshape(-1, k)
    return out


def _fold_group(job: BlockJob, producer: str, consumers: tuple[str, ...], s: torch.Tensor) -> torch.Tensor:
    """Fold ``s``; returns the scale as seen on the consumers' inputs (divide their inputs by it)."""
    block, attn = job.block, job.block.self_attn
    if producer.endswith("layernorm"):
        norm = block.get_submodule(producer)
        job.modified[producer + ".weight"] = "divided by AWQ input scales (folded)"
        return fold_into_norm(norm, [job.linear(c) for c in consumers], s, job.store_dtype)
    heads = (attn.n_kv_heads, attn.n_heads) if producer == V else (None, None)
    prev = job.linear(producer)
    fold_into_linear(prev, job.linear(consumers[0]), s, *heads)
    if prev.bias is not None:
        job.modified[producer + ".bias"] = "divided by AWQ scales of the next linear (folded)"
    return s if producer != V else gqa_expand(s, *heads)


def awq_block(job: BlockJob, cfg: AWQConfig) -> dict[str, dict[str, torch.Tensor]]:
    """Scale, fold, clip and quantize every quantized linear of the block (the block keeps W')."""
    grid = grid_for(job.fmt, "awq")
    attn = job.block.self_attn
    taps = {tap: job.runner.stats_tap() for _, consumers, tap in GROUPS if set(consumers) & job.quantize}
    if not taps:
        return {}
    job.runner.capture(job.block, job.x, taps)
    inputs: dict[str, torch.Tensor] = {}
    for producer, consumers, tap_name in GROUPS:
        if tap_name not in taps:
            continue
        tap = taps.pop(tap_name)
        x, x_mean = tap.sample(), tap.absmean
        weights = [job.linear(c).weight for c in consumers]
        expand = None
        if producer == V:
            x_mean = gqa_reduce(x_mean, attn.n_kv_heads, attn.n_heads)
            expand = lambda s: gqa_expand(s, attn.n_kv_heads, attn.n_heads)  # noqa: E731
        s = search_scale(x_mean, x, weights, grid, cfg.n_grid, expand)
        seen = _fold_group(job, producer, consumers, s)
        for c in consumers:
            inputs[c] = x / seen
            if c not in job.quantize:
                job.modified[c + ".weight"] = "kept in float, scaled by AWQ (folded)"
    out = {}
    for name in sorted(job.quantize, key=lambda n: [c for _, cs, _ in GROUPS for c in cs].index(n)):
        lin = job.linear(name)
        w = lin.weight
        if cfg.clip and name not in NO_CLIP:
            x = inputs[name]
            w = search_clip(w, x[:: max(1, x.shape[0] // cfg.clip_tokens)][: cfg.clip_tokens], grid, cfg.n_grid, cfg.max_shrink)
        out[name] = job.fmt.quantize(w.cpu())
        lin.weight.copy_(job.fmt.dequantize(out[name]).to(lin.weight.device))
    return out
