"""Tensor parallelism the way Llama-family engines split it (Megatron style), on arch-neutral tensors.

Column-parallel (q/k/v/gate/up): rank r holds a contiguous slice of the output rows N; q splits by
whole attention heads, k/v by whole kv heads, so each rank's attention is self-contained. Its
quantized tensors are per-row, so the split is a row slice; a bias is split the same way. A fused
linear (Phi-3's qkv_proj = q|k|v, gate_up_proj = gate|up) is split piece by piece: rank r holds
its run of each piece side by side (q_r|k_r|v_r), not the r-th contiguous cut of the whole N, so
each rank's fused matmul is exactly the unfused ranks' three; the manifest records the runs.

Row-parallel (o/down): rank r holds a slice of K; ranks' partial outputs are summed by an
all-reduce. Per-row 2-D tensors are cut along their second dimension in proportion to K (qweight
bytes: two int4 codes each; scale/zero group columns), so a group must never straddle two ranks.
1-D per-channel scales and the bias are replicated (engines add the bias once, after the reduce).

Everything else (embeddings, norms, lm_head, tensor-wide scales) is replicated. The slices are then
packed independently, so packing pads each rank's slice to the layout's tiles.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from turbopack.errors import ShapeError
from turbopack.formats import Format
from turbopack.formats.int4 import GROUP_SIZES
from turbopack.packer.families import LinearSpec, Parallel, Piece, config_dims, linear_spec, piece_bounds, spec_shape

RANK_DIR = "rank{}"
TPRule = LinearSpec  # the old name: a family linear carries its own split


def rule_for(module: str) -> LinearSpec | None:
    m = _BLOCK_LINEAR.fullmatch(module)
    return linear_spec(m.group(2)) if m else None


_BLOCK_LINEAR = re.compile(r"(.+\.)?layers\.\d+\.(.+)")


@dataclass(frozen=True)
class Slice:
    """Rank ``rank`` of ``tp`` holds [start, stop) of N (column) or K (row) of a [N, K] weight; a
    fused linear's column slice is one run per piece (``pieces``), start/stop then span them all."""

    parallel: Parallel
    rank: int
    tp: int
    start: int
    stop: int
    pieces: tuple[tuple[int, int], ...] = ()

    def ranges(self) -> tuple[tuple[int, int], ...]:
        return self.pieces or ((self.start, self.stop),)

    @property
    def size(self) -> int:
        return sum(b - a for a, b in self.ranges())

    def shape(self, full: tuple[int, int]) -> tuple[int, int]:
        n, k = full
        return {Parallel.COLUMN: (self.size, k), Parallel.ROW: (n, self.size)}.get(self.parallel, (n, k))

    def take(self, t: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """This rank's part of ``t`` along ``dim`` (a contiguous copy)."""
        return torch.cat([t.narrow(dim, a, b - a) for a, b in self.ranges()], dim).contiguous()

    def source_ranges(self, r0: int, r1: int) -> list[tuple[int, int]]:
        """The source rows holding this slice's rows [r0, r1) (column slices)."""
        out, local = [], 0
        for a, b in self.ranges():
            lo, hi = max(r0, local), min(r1, local + b - a)
            if lo < hi:
                out.append((a + lo - local, a + hi - local))
            local += b - a
        return out

    def as_dict(self) -> dict:
        d = {"parallel": self.parallel.value, "rank": self.rank, "tp": self.tp, "start": self.start,
             "stop": self.stop}
        return {**d, "pieces": [list(p) for p in self.pieces]} if self.pieces else d

    @classmethod
    def from_dict(cls, d: dict) -> Slice:
        pieces = tuple(tuple(p) for p in d.get("pieces", ()))
        return cls(Parallel(d["parallel"]), d["rank"], d["tp"], d["start"], d["stop"], pieces)


def plan_slices(module: str, shape: tuple[int, ...], tp: int, config: dict) -> list[Slice]:
    """One slice per rank for the linear ``module`` of ``shape`` [N, K] (replicated if not split)."""
    spec = rule_for(module) if tp > 1 and len(shape) == 2 else None
    if spec is None:
        return [Slice(Parallel.REPLICATED, r, tp, 0, shape[0] if shape else 1) for r in range(tp)]
    if spec.parallel is Parallel.ROW:
        steps = _split(module, spec.k, shape[1], tp, config, "K")
        return [Slice(Parallel.ROW, r, tp, r * steps, (r + 1) * steps) for r in range(tp)]
    if len(spec.n) == 1:
        step = _split(module, spec.n[0], shape[0], tp, config, "N")
        return [Slice(Parallel.COLUMN, r, tp, r * step, (r + 1) * step) for r in range(tp)]
    dims = config_dims(config)
    if shape[0] != spec_shape(spec, dims)[0]:
        raise ShapeError(f"{module}: N={shape[0]} is not the sum of its pieces ({', '.join(p.size for p in spec.n)}) "
                         f"for config.json; fix config.json or re-download the model")
    bounds = piece_bounds(spec, dims)
    steps = [_split(f"{module} (piece {i})", p, b - a, tp, config, "N")
             for i, (p, (a, b)) in enumerate(zip(spec.n, bounds))]
    out = []
    for r in range(tp):
        pieces = tuple((a + r * st, a + (r + 1) * st) for (a, _), st in zip(bounds, steps))
        out.append(Slice(Parallel.COLUMN, r, tp, pieces[0][0], pieces[-1][1], pieces))
    return out


def _split(module: str, piece: Piece, size: int, tp: int, config: dict, dim: str) -> int:
    """The size of one rank's run of ``piece`` (``size`` channels), whole units only."""
    if piece.unit is not None:
        units = _units(config, piece.unit)
        if units % tp or size % units:
            raise ShapeError(f"{module}: {piece.unit}={units} does not split into tp={tp} whole heads "
                             f"({dim}={size}); choose --tp among {divisors(units)}")
    if size % tp:
        raise ShapeError(
            f"{module}: {dim}={size} does not split into tp={tp} equal slices; choose --tp among {divisors(size)}"
        )
    return size // tp


def _units(config: dict, key: str) -> int:
    if key == "num_key_value_heads":
        return int(config.get(key) or config["num_attention_heads"])
    return int(config[key])


def divisors(n: int) -> list[int]:
    return [d for d in range(1, min(n, 64) + 1) if n % d == 0]


def check_group(module: str, fmt: Format, sl: Slice, full: tuple[int, int]) -> None:
    """A row-parallel slice of K must hold whole quantization groups (a group has one scale)."""
    group = getattr(fmt, "group_size", None)
    if sl.parallel is not Parallel.ROW or not group:
        return
    k_slice = sl.stop - sl.start
    if k_slice % group:
        fits = [g for g in GROUP_SIZES if k_slice % g == 0 and full[1] % g == 0]
        hint = f"group sizes that would work: {fits} (re-quantize with --group-size)" if fits else \
            f"no supported group size {list(GROUP_SIZES)} divides it; choose another --tp"
        raise ShapeError(f"{module}: tp={sl.tp} splits K={full[1]} into slices of {k_slice}, which group "
                         f"size {group} does not divide; {hint}")


def split_quantized(module: str, fmt: Format, q: dict[str, torch.Tensor], full: tuple[int, int],
                    sl: Slice) -> dict[str, torch.Tensor]:
    """This rank's arch-neutral tensors of a quantized linear (contiguous copies)."""
    if sl.parallel is Parallel.REPLICATED:
        return q
    out = {}
    for spec in fmt.specs(full):
        t = q[spec.suffix]
        if not spec.per_row:
            out[spec.suffix] = t
        elif sl.parallel is Parallel.COLUMN:
            out[spec.suffix] = sl.take(t)
        elif t.dim() == 1:
            out[spec.suffix] = t
        else:
            out[spec.suffix] = t[:, _cols(module, spec.suffix, t.shape[1], full[1], sl)].contiguous()
    return out


def _cols(module: str, suffix: str, cols: int, k: int, sl: Slice) -> slice:
    """Columns of a per-row tensor with ``cols`` columns for K range [start, stop)."""
    lo, hi = sl.start * cols, sl.stop * cols
    if lo % k or hi % k:
        raise ShapeError(f"{module}.{suffix}: K slice [{sl.start}, {sl.stop}) of {k} does not fall on "
                         f"whole columns ({cols} columns); choose another --tp")
    return slice(lo // k, hi // k)


def split_plain(name: str, t: torch.Tensor, tp: int, config: dict) -> list[torch.Tensor]:
    """Each rank's copy of an unquantized tensor: a split linear's weight/bias, else replicated."""
    module, _, leaf = name.rpartition(".")
    rule = rule_for(module) if tp > 1 else None
    if rule is None or leaf not in ("weight", "bias"):
        return [t] * tp
    if leaf == "bias":
        if rule.parallel is Parallel.ROW:
            return [t] * tp
        return [s.take(t) for s in plan_slices(module, (t.shape[0], 1), tp, config)]
    slices = plan_slices(module, tuple(t.shape), tp, config)
    return [s.take(t, 0 if rule.parallel is Parallel.COLUMN else 1) for s in slices]


def split_plain_rows(name: str, start: int, rows: torch.Tensor, tp: int, config: dict,
                     full: tuple[int, ...]) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Rows [start, start + len(rows)) of an unquantized tensor of shape ``full``, streamed: yields
    (rank, row offset in that rank's tensor, its part) like :func:`split_plain`. Tensors below 2-D
    must come whole (start 0)."""
    module = name.rpartition(".")[0]
    rule = rule_for(module) if tp > 1 else None
    if len(full) < 2 or rule is None:
        parts = split_plain(name, rows, tp, config) if len(full) < 2 else [rows] * tp
        yield from ((r, start, part) for r, part in enumerate(parts))
        return
    for sl in plan_slices(module, tuple(full), tp, config):
        if sl.parallel is Parallel.ROW:
            yield sl.rank, start, sl.take(rows, 1)
            continue
        local = 0  # a fused linear's slice is one run per piece: each run's rows in this chunk
        for a, b in sl.ranges():
            lo, hi = max(start, a), min(start + len(rows), b)
            if lo < hi:
                yield sl.rank, local + lo - a, rows[lo - start:hi - start].contiguous()
            local += b - a


def plain_shapes(name: str, shape: tuple[int, ...], tp: int, config: dict) -> list[tuple[int, ...]]:
    """Shapes of :func:`split_plain`'s outputs, without reading the tensor (for planning)."""
    return [tuple(t.shape) for t in split_plain(name, torch.empty(shape, device="meta"), tp, config)]


def rank_dir(rank: int) -> str:
    return RANK_DIR.format(rank)
