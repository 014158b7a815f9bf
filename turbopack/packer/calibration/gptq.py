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

import contextlib
from dataclasses import asdict, dataclass

import torch

from turbopack.packer.calibration.capture import BlockJob, HessianTap, parked
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


#: the ordered Hessian is gathered in this many column slices: two K x K/64 float32 temporaries
#: (13 MB each at K = 14336) instead of the K x K int64 index tensors a 2-D gather makes on a GPU
#: (torch makes both broadcast indices contiguous there: 3.3 GB at K = 14336)
ORDER_STEPS = 64


def inverse_hessian_factor(box: list[torch.Tensor], percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp I)^-1, damping harder if H is numerically singular.

    ``box`` holds the only reference to H (float32, column-major as :func:`ordered_hessian` makes
    it, ours to overwrite; emptied here). All three steps run in that one buffer: column-major is
    the layout LAPACK and cuSOLVER factor in, so ``out=`` the input needs no proxy copy (a
    row-major H made torch copy it once per factorization). cuSOLVER's inverse still clones its
    input (the solve's right-hand side is the output): two K x K on a GPU, one on the CPU. A
    harder try needs the undamped H back, so a copy of it waits in host memory (on the CPU
    device: a second copy) until a try succeeds."""
    a = box.pop()
    backup = a.to("cpu", copy=True)
    d0 = torch.diagonal(a).clone()
    damp = percdamp * float(torch.mean(d0))
    info = torch.empty((), dtype=torch.int32, device=a.device)
    for attempt in range(6):
        if attempt:
            a.copy_(backup)
        torch.diagonal(a).copy_(d0 + damp)
        torch.linalg.cholesky_ex(a, out=(a, info))  # a is now L, with L L^T = H + damp I
        if int(info) == 0:
            torch.cholesky_inverse(a, out=a)
            torch.linalg.cholesky_ex(a, upper=True, out=(a, info))
            if int(info) == 0:
                return a
        damp = max(damp, 1e-8) * 10
    raise ArithmeticError("GPTQ: Hessian is not positive definite even with heavy damping")


def ordered_hessian(h: torch.Tensor, dead: torch.Tensor, act_order: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, perm): A = H[perm][:, perm] with dead channels' diagonal 1, a new column-major float32
    matrix (``h`` is only read: linears that share an input share one H), and the column order
    ``perm``. Gathered in ORDER_STEPS column slices, so H, A and two thin slices are all that
    is alive."""
    diag = torch.where(dead, torch.ones_like(h[0]), torch.diag(h))
    k = h.shape[0]
    perm = torch.argsort(diag, descending=True, stable=True) if act_order else torch.arange(k, device=h.device)
    rows = torch.empty(k, k, dtype=torch.float32, device=h.device)  # rows[j] is A's column j
    step = -(-k // ORDER_STEPS)
    for j0 in range(0, k, step):
        cols = h.index_select(1, perm[j0:j0 + step])  # H[:, perm[j0:j1]]
        rows[j0:j0 + step] = cols.index_select(0, perm).T
    a = rows.T
    torch.diagonal(a).copy_(diag[perm])
    return a, perm


@torch.no_grad()
def gptq_quantize(w: torch.Tensor, h: torch.Tensor | list[torch.Tensor], grid: Grid,
                  cfg: GPTQConfig = GPTQConfig()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Quantize ``w`` [N, K] given the Hessian ``h`` [K, K] -> (dequantized float32 W', format tensors).
    The work runs on ``h``'s device (``w`` may be elsewhere: gptq_block parks the block in host
    memory). ``h`` in a one-element list is handed over (the list emptied, the matrix freed once
    its ordered copy exists: an 8B down_proj's H is 0.82 GB); a bare tensor is only read."""
    if isinstance(h, list):
        h = h.pop()
    w = w.detach().to(device=h.device, dtype=torch.float32, copy=True)
    n, k = w.shape
    g = grid.group_of(k)
    dead = torch.diag(h) == 0  # channels never active: any value works, zero is cheapest
    w[:, dead] = 0
    static = cfg.static or grid.group_size is None
    s_all = torch.ones(n, k // g, device=w.device)
    z_all = torch.zeros(n, k // g, device=w.device)
    if static:
        s_all, z_all = grid.params(w.reshape(n, k // g, g))
    a, perm = ordered_hessian(h, dead, cfg.act_order)
    del h  # a handed-over H is freed here: A replaces it
    if cfg.act_order:
        w = w[:, perm]
    box = [a]
    del a
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
    del hinv, w, w1, hinv1, err1
    codes = codes[:, torch.argsort(perm)]
    deq = grid.dequant(codes.reshape(n, k // g, g), s_all, z_all).reshape(n, k)
    return deq, grid.pack(codes, s_all, z_all)


def gptq_block(job: BlockJob, cfg: GPTQConfig) -> dict[str, dict[str, torch.Tensor]]:
    """GPTQ every quantized linear of the block, stage by stage; the block keeps W' afterwards.
    A stage's linears share one input and so one Hessian: each reads it, the last hands it over.
    While a stage with a large Hessian (down_proj's: K = the intermediate size) is quantized, the
    block's float32 weights wait in host memory (parked): only the linear at hand, its Hessian and
    their working copies are on the device."""
    grid = grid_for(job.fmt, "gptq")
    out: dict[str, dict[str, torch.Tensor]] = {}
    for stage in job.stages():
        names = [n for n in stage if n in job.quantize]
        if not names:
            continue
        tap = HessianTap()
        job.runner.capture(job.block, job.x, {names[0]: tap})
        box = [tap.hessian()]  # the only reference: the last linear's gptq_quantize frees it
        del tap
        with parked(job.block) if _worth_parking(box[0], job.block) else contextlib.nullcontext():
            for name in names:
                lin = job.linear(name)
                deq, out[name] = gptq_quantize(lin.weight, box if name == names[-1] else box[0], grid, cfg)
                lin.weight.copy_(deq)
                del deq
    return out


def _worth_parking(hessian: torch.Tensor, block: torch.nn.Module) -> bool:
    """Park the block while this stage is quantized? Only where the stage's K x K matrices (the
    Hessian, its ordered copy, cuSOLVER's clone: ~3 of them) are what could set the peak: a
    Hessian of at least a quarter of the block's weights (8B: down_proj's 0.82 GB against 0.87 GB;
    q/k/v's and gate/up's 67 MB stay put, and their round trips, ~1 s each with the pinning, are
    saved)."""
    weights = sum(p.numel() * p.element_size() for p in block.parameters())
    return hessian.numel() * hessian.element_size() * 4 >= weights
