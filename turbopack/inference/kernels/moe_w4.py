"""Grouped W4A16 mixture-of-experts: every selected expert of a step in one launch per matmul.

The experts' packed w4_t16x64 / w4_t64x64 tensors are stacked as [E, ...] (one expert = one
slice, the layout's own bytes). A step is four launches, none of which syncs with the host, so it
can be captured in a CUDA graph:

  align     one program: the (token, k) pairs sorted by expert (stable), each expert's run cut
            into blocks of BM rows (vLLM fused_moe's align-block idea; a run is not padded in
            memory, a block just knows how many of its rows are real). The grid of the matmuls
            is static: min(E, T*k) + T*k // BM blocks bound the blocks any routing can need;
            blocks past the routing's own count have 0 rows and exit at once.
  gate_up   per (block, BN rows of the intermediate): gate and up of the block's expert against
            the block's tokens (both read the same x tile), then h = act(g) * u, each product
            rounded to the activations' dtype as the loop of dense linears rounds it; h is
            written in the sorted order [T*k, I].
  down      per (block, BN rows of hidden): y = down(h) rounded to 16 bits, times the pair's
            routing weight, into an fp32 [T, k, hidden] buffer at the pair's own row.
  sum       over k (torch): a deterministic reduction in fp32, one rounding to the output dtype.

An expert's weights are therefore read once per step however many tokens chose it. The tile
decode is weight_only's (``_w16``: the contract's ``act((q - z) * s)``, exact), the product runs
on tensor cores with the tokens as the N side of ``W @ X^T`` (BM >= 16, rows masked).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch

from turbopack.inference.kernels import cuda_moe
from turbopack.inference.kernels.epilogue import interpreting, mma, tl, triton
from turbopack.inference.kernels.weight_only import _join8, _rows, _w4_planes, _w16, _x_like

#: activations the gate_up epilogue computes (the model's Activation values)
ACTIVATIONS = {"silu": 0}


class MoEPath(StrEnum):
    """Which grouped kernels run a step."""

    CUDA = "cuda"  # csrc/moe_w4.cu (cuda_moe): the dense decode's stage loop, 2-3 launches, where it applies
    TRITON = "triton"  # the kernels below: every other call, the CPU interpreter included

if triton is not None:

    @triton.jit
    def _align_kernel(IDS, PAIRS, BLK_E, BLK_START, BLK_ROWS, n_pairs, n_blocks,
                      EP: tl.constexpr, BM: tl.constexpr, BT: tl.constexpr, BB: tl.constexpr):
        ex = tl.arange(0, EP)
        counts = tl.zeros((EP,), tl.int32)
        for c0 in range(0, n_pairs, BT):
            i = c0 + tl.arange(0, BT)
            e = tl.load(IDS + i, mask=i < n_pairs, other=-1)
            counts += tl.sum((e[:, None] == ex[None, :]).to(tl.int32), 0)
        nblk = (counts + BM - 1) // BM
        blk_end = tl.cumsum(nblk, 0)
        blk_begin = blk_end - nblk
        seg_begin = tl.cumsum(counts, 0) - counts
        filled = tl.zeros((EP,), tl.int32)
        for c0 in range(0, n_pairs, BT):  # stable: a pair's rank = earlier pairs of its expert
            i = c0 + tl.arange(0, BT)
            e = tl.load(IDS + i, mask=i < n_pairs, other=-1)
            hit = (e[:, None] == ex[None, :]).to(tl.int32)
            rank = tl.sum(tl.cumsum(hit, 0) * hit, 1) - 1
            base = tl.sum(hit * (seg_begin + filled)[None, :], 1)
            tl.store(PAIRS + base + rank, i, mask=i < n_pairs)
            filled += tl.sum(hit, 0)
        for b0 in range(0, n_blocks, BB):
            b = b0 + tl.arange(0, BB)
            owner = tl.sum((blk_end[None, :] <= b[:, None]).to(tl.int32), 1)  # experts done before b
            mine = (ex[None, :] == owner[:, None]).to(tl.int32)  # none for b past the last block
            j = b - tl.sum(mine * blk_begin[None, :], 1)
            rows = tl.minimum(tl.maximum(tl.sum(mine * counts[None, :], 1) - j * BM, 0), BM)
            tl.store(BLK_E + b, owner, mask=b < n_blocks)
            tl.store(BLK_START + b, tl.sum(mine * seg_begin[None, :], 1) + j * BM, mask=b < n_blocks)
            tl.store(BLK_ROWS + b, rows, mask=b < n_blocks)

    @triton.jit
    def _expert_dot(QW, S, Z, X, xrow, ok, row_w, row_s, rmask, K, acc,
                    TN: tl.constexpr, KS: tl.constexpr, BN: tl.constexpr, ASYM: tl.constexpr, DOT_F32: tl.constexpr):
        """acc[BN, BM] += W[rows, :] @ X[xrow, :]^T over all of K, one quantization group a step."""
        kk = tl.arange(0, KS)
        for t in range(0, tl.cdiv(K, KS)):
            k = t * KS + kk
            xt = tl.load(X + xrow[None, :] + k[:, None], mask=ok[None, :] & (k[:, None] < K), other=0.0)
            w = _w16(QW, S, Z, row_w, row_s, rmask, t, X.dtype.element_ty, 0, TN, KS, BN, ASYM)
            acc = mma(w, xt, acc, DOT_F32)
        return acc

    @triton.jit
    def _gemv_step(QW, S, Z, row_w, row_s, rmask, t, xv, acc, TN: tl.constexpr, KS: tl.constexpr,
                   ASYM: tl.constexpr):
        """acc[BN, KS/8, 2, 2, 2] += group t's weights * x, in the weights' joined register layout
        (weight_only's GEMV with ROUND=False: the fp32 weights are not rounded to 16 bits first)."""
        return acc + _join8(_w4_planes(QW, S, Z, row_w, row_s, rmask, t, TN, KS, ASYM)) * xv[None]

    @triton.jit
    def _gemv_sum(acc):
        return tl.sum(tl.sum(tl.sum(tl.sum(acc, 4), 3), 2), 1)[:, None]

    @triton.jit
    def _block(PAIRS, BLK_E, BLK_START, BLK_ROWS, BM: tl.constexpr):
        """(real rows, expert, sorted positions [BM], row mask, pair ids) of this program's block."""
        pid_m = tl.program_id(1)
        rows = tl.load(BLK_ROWS + pid_m)
        e = tl.load(BLK_E + pid_m).to(tl.int64)
        pos = tl.load(BLK_START + pid_m) + tl.arange(0, BM)
        ok = tl.arange(0, BM) < rows
        pair = tl.load(PAIRS + pos, mask=ok, other=0)
        return rows, e, pos, ok, pair

    @triton.jit
    def _gate_up_kernel(X, QG, SG, ZG, QU, SU, ZU, H, PAIRS, BLK_E, BLK_START, BLK_ROWS,
                        N, NP, K, KT, KGP, stride_qe, stride_se, stride_xm, TOPK,
                        TN: tl.constexpr, KS: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr,
                        ASYM: tl.constexpr, DOT_F32: tl.constexpr, ACT: tl.constexpr):
        rows, e, pos, ok, pair = _block(PAIRS, BLK_E, BLK_START, BLK_ROWS, BM)
        if rows > 0:
            rn, rmask, row_w, row_s = _rows(tl.program_id(0), NP, KT, KGP, 0, TN, BN)
            xrow = (pair // TOPK).to(tl.int64) * stride_xm
            qo, so = e * stride_qe, e * stride_se
            DT: tl.constexpr = X.dtype.element_ty
            if BM == 1:  # one token (T = 1): fp32 FMAs, no tensor-core tile of 15 empty columns
                xs = X + tl.sum(xrow, 0)
                ga = tl.zeros((BN, KS // 8, 2, 2, 2), tl.float32)
                ua = tl.zeros((BN, KS // 8, 2, 2, 2), tl.float32)
                for t in range(0, tl.cdiv(K, KS)):
                    xv = _x_like(xs, t * KS, K, 0, KS)
                    ga = _gemv_step(QG + qo, SG + so, ZG + so, row_w, row_s, rmask, t, xv, ga, TN, KS, ASYM)
                    ua = _gemv_step(QU + qo, SU + so, ZU + so, row_w, row_s, rmask, t, xv, ua, TN, KS, ASYM)
                g = _gemv_sum(ga)
                u = _gemv_sum(ua)
            else:
                g = tl.zeros((BN, BM), tl.float32)
                u = tl.zeros((BN, BM), tl.float32)
                kk = tl.arange(0, KS)
                for t in range(0, tl.cdiv(K, KS)):  # gate and up in one loop: one x tile, twice the bytes in flight
                    k = t * KS + kk
                    xt = tl.load(X + xrow[None, :] + k[:, None], mask=ok[None, :] & (k[:, None] < K), other=0.0)
                    wg = _w16(QG + qo, SG + so, ZG + so, row_w, row_s, rmask, t, DT, 0, TN, KS, BN, ASYM)
                    g = mma(wg, xt, g, DOT_F32)
                    wu = _w16(QU + qo, SU + so, ZU + so, row_w, row_s, rmask, t, DT, 0, TN, KS, BN, ASYM)
                    u = mma(wu, xt, u, DOT_F32)
            g = g.to(DT).to(tl.float32)  # the dense linears' outputs are 16-bit: round as they do
            u = u.to(DT).to(tl.float32)
            if ACT == 0:  # silu
                a = (g / (1.0 + tl.exp(-g))).to(DT).to(tl.float32)
            h = (a * u).to(DT)
            tl.store(H + pos[None, :].to(tl.int64) * N + rn[:, None], h, mask=(rn[:, None] < N) & ok[None, :])

    @triton.jit
    def _down_kernel(H, QW, S, Z, OUT, WTS, PAIRS, BLK_E, BLK_START, BLK_ROWS,
                     N, NP, K, KT, KGP, stride_qe, stride_se,
                     TN: tl.constexpr, KS: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr,
                     ASYM: tl.constexpr, DOT_F32: tl.constexpr):
        rows, e, pos, ok, pair = _block(PAIRS, BLK_E, BLK_START, BLK_ROWS, BM)
        if rows > 0:
            rn, rmask, row_w, row_s = _rows(tl.program_id(0), NP, KT, KGP, 0, TN, BN)
            qo, so = e * stride_qe, e * stride_se
            if BM == 1:
                hs = H + tl.sum(pos, 0).to(tl.int64) * K
                acc_nd = tl.zeros((BN, KS // 8, 2, 2, 2), tl.float32)
                for t in range(0, tl.cdiv(K, KS)):
                    acc_nd = _gemv_step(QW + qo, S + so, Z + so, row_w, row_s, rmask, t, _x_like(hs, t * KS, K, 0, KS),
                                        acc_nd, TN, KS, ASYM)
                acc = _gemv_sum(acc_nd)
            else:
                acc = tl.zeros((BN, BM), tl.float32)
                acc = _expert_dot(QW + qo, S + so, Z + so, H, pos.to(tl.int64) * K, ok, row_w, row_s, rmask, K, acc,
                                  TN, KS, BN, ASYM, DOT_F32)
            wt = tl.load(WTS + pair, mask=ok, other=0.0).to(tl.float32)
            y = acc.to(H.dtype.element_ty).to(tl.float32) * wt[None, :]
            tl.store(OUT + pair[None, :].to(tl.int64) * N + rn[:, None], y, mask=(rn[:, None] < N) & ok[None, :])


@dataclass(frozen=True)
class MoEConfig:
    """Tiles of the grouped kernels: BN rows of an expert's weight x BM tokens per program."""

    block_m: int = 16
    block_n_gate_up: int = 32
    block_n_down: int = 32
    num_warps: int = 4
    num_stages: int = 3


def default_config(n_pairs: int, n_experts: int, tokens: int) -> MoEConfig:
    """BM follows the tokens an expert gets on average (one token: BM = 1, the GEMV form, every
    block one distinct expert); few pairs (decode) take narrow BN so that the few experts' rows
    still spread over every SM."""
    per_expert = n_pairs / max(1, min(n_experts, n_pairs))
    bm = 1 if tokens == 1 else min(64, max(16, triton.next_power_of_2(int(per_expert))))
    bn = 16 if n_pairs <= 16 else (32 if n_pairs <= 256 else 64)
    return MoEConfig(block_m=bm, block_n_gate_up=bn, block_n_down=2 * bn if n_pairs <= 16 else bn,
                     num_warps=4 if bm * bn <= 4096 else 8)


@dataclass(frozen=True)
class StackedW4:
    """One linear of every expert, packed w4 tensors stacked [E, ...] (contiguous)."""

    qweight: torch.Tensor  # int32 [E, NT, KT, TN, 8]
    scales: torch.Tensor   # [E, NT, K_pad/G, TN]
    zeros: torch.Tensor | None  # uint8 like scales (asym), else None
    shape: tuple[int, int]  # (N, K) of one expert's weight
    group: int

    def args(self) -> tuple:
        q, s = self.qweight, self.scales
        z = self.zeros if self.zeros is not None else s  # (a placeholder pointer: sym reads no zeros)
        return q, s, z

    def packed(self, e: int) -> dict[str, torch.Tensor]:
        """Expert e's packed tensors (contiguous slices), as the dense linears take them."""
        out = {"qweight": self.qweight[e], "scales": self.scales[e]}
        if self.zeros is not None:
            out["zeros"] = self.zeros[e]
        return out

    @property
    def layout_dims(self) -> tuple[int, int, int, int]:
        """(rows incl. padding NP, KT, K_pad/G, TN)."""
        _, nt, kt, tn, _ = self.qweight.shape
        return nt * tn, kt, self.scales.shape[2], tn


def max_blocks(n_pairs: int, n_experts: int, bm: int) -> int:
    """Blocks of BM rows any routing of ``n_pairs`` pairs over ``n_experts`` needs, at most:
    one partial block per expert hit plus the whole ones, and no more blocks than pairs."""
    return min(n_pairs, min(n_experts, n_pairs) + n_pairs // bm)


def align(idx: torch.Tensor, n_experts: int, bm: int) -> tuple[torch.Tensor, ...]:
    """Top-k ids [T, k] -> (pairs sorted by expert [T*k], block expert, block start, block rows)."""
    ids = idx.reshape(-1).to(torch.int32)
    n = ids.numel()
    nb = max_blocks(n, n_experts, bm)
    pairs = torch.empty(n, dtype=torch.int32, device=ids.device)
    blk = torch.empty(3, nb, dtype=torch.int32, device=ids.device)
    _align_kernel[(1,)](ids, pairs, blk[0], blk[1], blk[2], n, nb, EP=triton.next_power_of_2(n_experts), BM=bm,
                        BT=64 if n_experts <= 128 else 16, BB=64, num_warps=4)
    return pairs, blk[0], blk[1], blk[2]


def grouped_moe(x2: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor, gate: StackedW4, up: StackedW4,
                down: StackedW4, act: str = "silu", cfg: MoEConfig | None = None,
                path: MoEPath | None = None) -> torch.Tensor:
    """sum_k weights[t, k] * down_e(act(gate_e(x_t)) * up_e(x_t)), e = idx[t, k]: x2 [T, hidden]
    -> [T, hidden] in x2's dtype. ``path`` None: the CUDA grouped decode where it applies (no
    Triton ``cfg`` given), else the Triton kernels."""
    if path is None:
        path = MoEPath.CUDA if cfg is None and act == "silu" and cuda_moe.supports(x2, weights, idx, gate, up, down) \
            else MoEPath.TRITON
    if path is MoEPath.CUDA:
        return cuda_moe.grouped_moe_cuda(x2, weights, idx, gate, up, down)
    return _grouped_triton(x2, weights, idx, gate, up, down, act, cfg)


def _grouped_triton(x2, weights, idx, gate: StackedW4, up: StackedW4, down: StackedW4, act: str,
                    cfg: MoEConfig | None) -> torch.Tensor:
    t, top_k = idx.shape
    n_exp = gate.qweight.shape[0]
    inter, hidden = gate.shape
    cfg = cfg or default_config(t * top_k, n_exp, t)
    x2 = x2.contiguous()
    pairs, blk_e, blk_start, blk_rows = align(idx, n_exp, cfg.block_m)
    nb = blk_e.numel()
    h = torch.empty(t * top_k, inter, dtype=x2.dtype, device=x2.device)
    y = torch.empty(t * top_k, hidden, dtype=torch.float32, device=x2.device)
    if cfg.block_m == 1 and t > 1:  # BM = 1 gives each pair its own block: an expert read per token
        raise ValueError("block_m = 1 (the GEMV form) is for one token")
    common = dict(BM=cfg.block_m, ASYM=gate.zeros is not None, DOT_F32=interpreting(),
                  num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    np_, kt, kgp, tn = gate.layout_dims
    _gate_up_kernel[(triton.cdiv(inter, cfg.block_n_gate_up), nb)](
        x2, *gate.args(), *up.args(), h, pairs, blk_e, blk_start, blk_rows,
        inter, np_, hidden, kt, kgp, gate.qweight[0].numel(), gate.scales[0].numel(), x2.stride(0), top_k,
        TN=tn, KS=gate.group, BN=cfg.block_n_gate_up, ACT=ACTIVATIONS[act], **common)
    np_, kt, kgp, tn = down.layout_dims
    _down_kernel[(triton.cdiv(hidden, cfg.block_n_down), nb)](
        h, *down.args(), y, weights.reshape(-1).float().contiguous(), pairs, blk_e, blk_start, blk_rows,
        hidden, np_, inter, kt, kgp, down.qweight[0].numel(), down.scales[0].numel(),
        TN=tn, KS=down.group, BN=cfg.block_n_down, **common)
    return y.view(t, top_k, hidden).sum(1).to(x2.dtype)


__all__ = ["ACTIVATIONS", "MoEConfig", "MoEPath", "StackedW4", "align", "default_config", "grouped_moe", "max_blocks"]
