"""AWQ (Lin et al., 2023): protect the weights that meet large activations by scaling them up
before rounding, and fold the inverse scale into the op that produces the activation.

Per group of linears sharing an input (the family's ScaleGroups: q/k/v after input_layernorm; o
after v; gate/up after the MLP's input norm; down after up; for Phi-3 the fused linears and the v
and up pieces of qkv_proj and gate_up_proj) we try ``s = mean|x|^a / mean|w|^(1-a)`` for ``a`` on a
grid in [0, 1) (AutoAWQ's "duo scaling"; ``mean|w|`` is each input channel's weight magnitude
relative to its group max), normalised to geometric mean 1, and keep the one whose fake-quantized
weights ``Q(W diag(s)) / s`` give the lowest error on a sample of whole calibration sequences,
measured where it matters (as AutoAWQ does): q/k/v on the attention output (a q/k error passes
through the softmax), gate/up on the MLP output (through the SiLU gate), o and down on their own.
The scale is folded (fold.py) so the float model is unchanged. Then each weight's per-group
clipping range is searched on its output error (for grids with a zero point, both ends of the
range independently; llm-awq skips q/k here, but on the bundled model clipping them too lowered
the KL to the float model, see docs/quality.md). Finally the format's own RTN is applied to the
scaled, clipped weights, so the stored tensors are ordinary RTN tensors of a different weight.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn

from turbopack.inference.norms import RMSNorm
from turbopack.packer.calibration.capture import BlockJob, block_dims
from turbopack.packer.calibration.fold import fold_into_linear, fold_into_norm, gqa_expand, gqa_reduce
from turbopack.packer.calibration.grid import Grid, grid_for
from turbopack.packer.families import ScaleGroup, linear_spec, piece_bounds

CLIP_BYTES = 256 << 20


@dataclass(frozen=True)
class AWQConfig:
    n_grid: int = 20
    clip: bool = True
    max_shrink: float = 0.5
    search_tokens: int = 8192
    clip_tokens: int = 512
    duo_scaling: bool = True

    def params(self) -> dict:
        return asdict(self)


Run = Callable[[list[torch.Tensor]], torch.Tensor]


@torch.no_grad()
def search_scale(x_mean: torch.Tensor, weights: list[torch.Tensor], grid: Grid, run: Run, n_grid: int = 20,
                 expand: Callable[[torch.Tensor], torch.Tensor] | None = None, w_mean: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """The per-channel scale minimising ||run(W) - run(Q(W s) / s)||^2 over the consumers ``weights``;
    ``run`` maps the consumers' weights to the judged output on the sample (e.g. ``x @ W.T``).
    ``expand`` maps a scale over the producer's channels to the consumers' input channels;
    ``w_mean`` (AutoAWQ's "duo scaling") also divides by a per-channel weight magnitude."""
    ws = [t.float() for t in weights]
    ref = run(ws)
    best, best_s = float("inf"), torch.ones_like(x_mean)
    for r in range(n_grid):
        a = r / n_grid
        s = x_mean.clamp(min=1e-4).pow(a)
        if w_mean is not None:
            s = s / w_mean.clamp(min=1e-4).pow(1 - a)
        s = s / (s.max() * s.min()).sqrt()
        se = s if expand is None else expand(s)
        loss = float((run([grid.fake(w * se) / se for w in ws]) - ref).pow(2).mean())
        if loss < best:
            best, best_s = loss, s
    return best_s


def linear_output(x: torch.Tensor) -> Run:
    return lambda ws: x @ torch.cat(ws).T


@contextlib.contextmanager
def _swapped(linears: list[nn.Linear], ws: list[torch.Tensor]) -> Iterator[None]:
    saved = [lin.weight.data for lin in linears]
    for lin, w in zip(linears, ws):
        lin.weight.data = w
    try:
        yield
    finally:
        for lin, w in zip(linears, saved):
            lin.weight.data = w


def module_output(job: BlockJob, module: str, consumers: tuple[str, ...], x: torch.Tensor) -> Run:
    """``module`` of the block on sample ``x`` [S, L, K] with the consumers' weights replaced."""
    mod, linears, r = job.block.get_submodule(module), [job.linear(c) for c in consumers], job.runner

    def run(ws):  # the runner's sequences at a time: its float32 scratch bound holds here too
        with _swapped(linears, ws):
            args = r.rope(job.block) if module == "self_attn" else ()
            return torch.cat([mod(x[b:b + r.batch_size], *args) for b in range(0, x.shape[0], r.batch_size)])
    return run


def weight_mean(weights: list[torch.Tensor], grid: Grid) -> torch.Tensor:
    """Mean over rows of |W| relative to its group's max, per input channel (for duo scaling)."""
    w = torch.cat([t.float() for t in weights]).abs()
    wg = w.reshape(w.shape[0], -1, grid.group_of(w.shape[1]))
    return (wg / wg.amax(-1, keepdim=True).clamp(min=1e-8)).reshape(w.shape).mean(0)


@torch.no_grad()
def search_clip(
    w: torch.Tensor, x: torch.Tensor, grid: Grid, n_grid: int = 20, max_shrink: float = 0.5
) -> torch.Tensor:
    """``w`` with each quantization group clamped to the shrunk range that minimises the group's
    output error on tokens ``x`` [T, K]: [-m, m] with m = max|w_g| * (1 - i / n_grid) for symmetric
    grids (AWQ's search); for grids with a zero point, whose range need not be centred, both ends
    are searched (hi * (1 - i / n_grid), lo * (1 - j / n_grid)) over all (i, j) pairs."""
    n, k = w.shape
    g = grid.group_of(k)
    xg = x.float().reshape(x.shape[0], k // g, g).transpose(0, 1)  # [groups, T, G]
    # A group's output error mean_t (x_g . d_g)^2 is d_g^T H_g d_g with H_g = X_g^T X_g / T: with
    # the G x G Gram matrices formed once, each candidate costs G^2 per group-row instead of T * G.
    gram = torch.bmm(xg.transpose(1, 2), xg) / x.shape[0]  # [groups, G, G]
    out = torch.empty_like(w, dtype=torch.float32)
    rows = max(1, CLIP_BYTES // (16 * k))  # ~4 float32 [rows, K] temporaries per candidate
    steps = range(int(max_shrink * n_grid))
    pairs = [(i, j) for i in steps for j in steps] if grid.has_zero else [(i, i) for i in steps]
    for r0 in range(0, n, rows):
        wg = w[r0:r0 + rows].float().reshape(-1, k // g, g)  # [rows, groups, G]
        if grid.has_zero:
            hi0, lo0 = wg.amax(-1, keepdim=True).clamp(min=0), wg.amin(-1, keepdim=True).clamp(max=0)
        else:
            hi0 = wg.abs().amax(-1, keepdim=True)
            lo0 = -hi0
        best_hi, best_lo, min_err = hi0, lo0, torch.full(hi0.shape[:2], float("inf"), device=w.device)
        for i, j in pairs:
            hi, lo = hi0 * (1 - i / n_grid), lo0 * (1 - j / n_grid)
            q = grid.fake(torch.minimum(torch.maximum(wg, lo), hi).reshape(-1, k)).reshape(wg.shape)
            d = (q - wg).transpose(0, 1)  # [groups, rows, G]
            err = (torch.bmm(d, gram) * d).sum(-1).T  # [rows, groups]: each group's share of the output error
            better = err < min_err
            min_err = torch.where(better, err, min_err)
            best_hi = torch.where(better[..., None], hi, best_hi)
            best_lo = torch.where(better[..., None], lo, best_lo)
        out[r0:r0 + rows] = torch.minimum(torch.maximum(wg, best_lo), best_hi).reshape(-1, k)
    return out


def producer_rows(job: BlockJob, g: ScaleGroup) -> tuple[int, int] | None:
    """The rows of a fused producer that feed the group (None: all of them)."""
    if g.piece is None:
        return None
    return piece_bounds(linear_spec(g.producer), block_dims(job.runner.cfg))[g.piece]


def fold_group(job: BlockJob, g: ScaleGroup, s: torch.Tensor, method: str) -> torch.Tensor:
    """Fold ``s`` into the group's producer; returns the scale as seen on the consumers' inputs
    (divide their inputs by it). ``method`` names the fold in the manifest."""
    producer = job.block.get_submodule(g.producer)
    consumers = [job.linear(c) for c in g.consumers]
    if isinstance(producer, RMSNorm):
        job.modified[g.producer + ".weight"] = f"divided by {method} input scales (folded)"
        return fold_into_norm(producer, consumers, s, job.store_dtype)
    attn = job.block.self_attn
    heads = (attn.n_kv_heads, attn.n_heads) if g.gqa else (None, None)
    fold_into_linear(producer, consumers[0], s, *heads, rows=producer_rows(job, g))
    if producer.bias is not None:
        job.modified[g.producer + ".bias"] = f"divided by {method} scales of the next linear (folded)"
    if g.producer not in job.quantize:
        job.modified[g.producer + ".weight"] = f"kept in float, divided by {method} scales (folded)"
    return gqa_expand(s, *heads) if g.gqa else s


def awq_block(job: BlockJob, cfg: AWQConfig) -> dict[str, dict[str, torch.Tensor]]:
    """Scale, fold, clip and quantize every quantized linear of the block (the block keeps W')."""
    grid = grid_for(job.fmt, "awq")
    groups = job.groups()
    taps = {g.consumers[0]: job.runner.stats_tap() for g in groups if set(g.consumers) & job.quantize}
    # linears no scale is folded for (MoE experts' gate/up: their norm also feeds the router) are
    # still clipped on their inputs: one tap per stage, its linears share the input
    covered = {c for g in groups for c in g.consumers}
    loose = [[n for n in st if n in job.quantize and n not in covered] for st in job.stages()]
    loose = [(names[0], names) for names in loose if names]
    taps.update({tap: job.runner.stats_tap() for tap, _ in loose})
    if not taps:
        return {}
    job.runner.capture(job.block, job.x, taps)
    inputs: dict[str, torch.Tensor] = {}
    for tap, names in loose:
        x = taps.pop(tap).sample()
        inputs.update({n: x.reshape(-1, x.shape[-1]) for n in names})
    for g in groups:
        if g.consumers[0] not in taps:
            continue
        tap = taps.pop(g.consumers[0])
        sample = tap.sample()
        seen = _search_and_fold(job, cfg, grid, g, sample, tap.absmean)
        rows = sample.reshape(-1, seen.numel())
        clip_rows = rows[:: max(1, rows.shape[0] // cfg.clip_tokens)][: cfg.clip_tokens] / seen  # all clip reads
        for c in g.consumers:
            inputs[c] = clip_rows
            if c not in job.quantize:
                job.modified[c + ".weight"] = "kept in float, scaled by AWQ (folded)"
        del tap, sample, rows
    order = [n for n, m in job.block.named_modules() if isinstance(m, nn.Linear)]
    out = {}
    for name in sorted(job.quantize, key=order.index):
        lin = job.linear(name)
        w = lin.weight
        if cfg.clip:
            w = search_clip(w, inputs[name], grid, cfg.n_grid, cfg.max_shrink)
        out[name] = job.fmt.quantize(w.cpu())
        lin.weight.copy_(job.fmt.dequantize(out[name]).to(lin.weight.device))
    return out


def _search_and_fold(job: BlockJob, cfg: AWQConfig, grid: Grid, g: ScaleGroup, x: torch.Tensor,
                     x_mean: torch.Tensor) -> torch.Tensor:
    weights = [job.linear(c).weight for c in g.consumers]
    expand, w_mean = None, weight_mean(weights, grid) if cfg.duo_scaling else None
    if g.gqa:
        heads = (job.block.self_attn.n_kv_heads, job.block.self_attn.n_heads)
        x_mean = gqa_reduce(x_mean, *heads)
        w_mean = None if w_mean is None else gqa_reduce(w_mean, *heads)
        expand = lambda s: gqa_expand(s, *heads)  # noqa: E731
    s = search_scale(x_mean, weights, grid, module_output(job, g.judged, g.consumers, x), cfg.n_grid, expand, w_mean)
    return fold_group(job, g, s, "AWQ")
