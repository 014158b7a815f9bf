"""GPTQ (Frantar et al., 2022): quantize a weight one column at a time, pushing each column's
rounding error onto the columns not yet quantized, weighted by the inverse Hessian of the layer's
reconstruction loss ``||X W^T - X W'^T||^2`` (H = 2 X^T X over the calibration tokens).

Details that matter for our files:
  * the codes are made with the format's own grid (grid.py), so the output is exactly the tensors
    RTN would write for those codes: same qweight/scales/zeros layout, nothing new at run time;
  * without act-order a group's (scale, zero) is chosen when GPTQ reaches the group, from the
    error-updated weights (the block size is a multiple of the group size, so it sees them all);
  * with act-order (columns in decreasing Hessian diagonal) groups are *static*: every group's
    parameters come from the original weights in the original column order, so the stored tensors
    need no g_idx permutation at run time. Per-channel formats (int8) are static by nature.
Block pipeline ("true sequential"): q/k/v, then o, then gate/up, then down, each stage's Hessian
taken with the earlier stages already quantized.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from turbopack.packer.calibration.capture import BlockJob, HessianTap
from turbopack.packer.calibration.grid import Grid, grid_for


@dataclass(frozen=True)
class GPTQConfig:
    percdamp: float = 0.01
    blocksize: int = 128
    act_order: bool = True  # the default by measurement: docs/quality.md, "GPTQ settings"
    static_groups: bool = False  # act-order implies it (our files have no g_idx)

    def params(self) -> dict:
        return {**asdict(self), "static_groups": self.static, "true_sequential": True}

    @property
    def static(self) -> bool:
        return self.act_order or self.static_groups


def inverse_hessian_factor(box: list[torch.Tensor], percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp I)^-1, damping harder if H is numerically singular.

    ``box`` holds the only reference to H (float32, ours to overwrite; emptied here): at an 8B
    down_proj's K = 14336 every K x K matrix is 0.82 GB, so both factorizations run in place
    (``out=`` the input; torch makes one temporary) and H's factor is dropped once the inverse
    exists: two K x K alive at most (four before). A harder try needs the undamped H back, so a
    copy of it waits in host memory (on the CPU device: a second copy) until a try succeeds."""
    h = box.pop()
    backup = h.to("cpu", copy=True)
    idx = torch.arange(h.shape[0], device=h.device)
    d0 = torch.diag(h).clone()
    damp = percdamp * float(torch.mean(d0))
    info = torch.empty((), dtype=torch.int32, device=h.device)
    for attempt in range(6):
        if h is None:  # the first factor succeeded, the second did not
            h = backup.to(d0.device, copy=True)
        elif attempt:
            h.copy_(backup)
        h[idx, idx] = d0 + damp
        torch.linalg.cholesky_ex(h, out=(h, info))  # h is now L, with L L^T = H + damp I
        if int(info) == 0:
            hinv = torch.cholesky_inverse(h)
            h = None
            torch.linalg.cholesky_ex(hinv, upper=True, out=(hinv, info))
            if int(info) == 0:
                return hinv
            del hinv
        damp = max(damp, 1e-8) * 10
    raise ArithmeticError("GPTQ: Hessian is not positive definite even with heavy damping")


def _ordered_hessian(h: torch.Tensor, dead: torch.Tensor, act_order: bool, consume: bool
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(H with dead channels' diagonal 1, in the column order; that order): a tensor of our own,
    without holding three K x K at once (one gather for the permutation; no copy when consumed)."""
    diag = torch.where(dead, torch.ones_like(h[0]), torch.diag(h))
    if act_order:
        perm = torch.argsort(diag, descending=True, stable=True)
        h = h[perm[:, None], perm[None, :]]
    else:
        perm = torch.arange(h.shape[0], device=h.device)
        h = h if consume else h.clone()
    idx = torch.arange(h.shape[0], device=h.device)
    h[idx, idx] = diag[perm]
    return h, perm


@torch.no_grad()
def gptq_quantize(w: torch.Tensor, h: torch.Tensor | list[torch.Tensor], grid: Grid,
                  cfg: GPTQConfig = GPTQConfig()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Quantize ``w`` [N, K] given the Hessian ``h`` [K, K] -> (dequantized float32 W', format tensors).
    ``h`` in a one-element list is handed over: float32, changed in place, the list emptied, and the
    matrix freed as soon as it is not needed (an 8B down_proj's H is 0.82 GB; gptq_block hands each
    linear its own); a bare tensor is left as it was."""
    consume = isinstance(h, list)
    h = h.pop() if consume else h
    w = w.detach().float().clone()
    n, k = w.shape
    g = grid.group_of(k)
    dead = torch.diag(h) == 0  # channels never active: any value works, zero is cheapest
    w[:, dead] = 0
    static = cfg.static or grid.group_size is None
    s_all = torch.ones(n, k // g, device=w.device)
    z_all = torch.zeros(n, k // g, device=w.device)
    if static:
        s_all, z_all = grid.params(w.reshape(n, k // g, g))
    h, perm = _ordered_hessian(h, dead, cfg.act_order, consume)
    if cfg.act_order:
        w = w[:, perm]
    box = [h]
    del h
    hinv = inverse_hessian_factor(box, cfg.percdamp)
    codes = torch.zeros_like(w)
    group_of_col = (perm // g).tolist()
    bs = max(1, cfg.blocksize // g) * g if not static else cfg.blocksize
    for i1 in range(0, k, bs):
        i2 = min(i1 + bs, k)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            grp = group_of_col[i1 + i]
            if not static and (i1 + i) % g == 0:
                s_all[:, grp], z_all[:, grp] = grid.params(w1[:, i:i + g])
            s, z = s_all[:, grp], z_all[:, grp]
            c = grid.codes(w1[:, i:i + 1], s, z)
            codes[:, i1 + i] = c[:, 0]
            e = (w1[:, i] - grid.dequant(c, s, z)[:, 0]) / hinv1[i, i]
            w1[:, i:] -= e[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    codes = codes[:, torch.argsort(perm)]
    deq = grid.dequant(codes.reshape(n, k // g, g), s_all, z_all).reshape(n, k)
    return deq, grid.pack(codes, s_all, z_all)


def gptq_block(job: BlockJob, cfg: GPTQConfig) -> dict[str, dict[str, torch.Tensor]]:
    """GPTQ every quantized linear of the block, stage by stage; the block keeps W' afterwards."""
    grid = grid_for(job.fmt, "gptq")
    out: dict[str, dict[str, torch.Tensor]] = {}
    for stage in job.stages():
        names = [n for n in stage if n in job.quantize]
        if not names:
            continue
        tap = HessianTap()
        job.runner.capture(job.block, job.x, {names[0]: tap})  # a stage's linears share one input
        # gptq_quantize consumes its Hessian: one copy per linear, the last gets the tap's own
        hessians = [tap.hessian()]
        del tap
        hessians[:0] = [hessians[0].clone() for _ in names[1:]]
        for name in names:
            lin = job.linear(name)
            deq, out[name] = gptq_quantize(lin.weight, [hessians.pop(0)], grid, cfg)
            lin.weight.copy_(deq)
    return out
