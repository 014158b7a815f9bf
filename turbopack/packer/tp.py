"""Tensor parallelism the way Llama-family engines split it (Megatron style), on arch-neutral tensors.

Column-parallel (q/k/v/gate/up): rank r holds a contiguous slice of the output rows N; q splits by
whole attention heads, k/v by whole kv heads, so each rank's attention is self-contained. Its
quantized tensors are per-row, so the split is a row slice; a bias is split the same way.

Row-parallel (o/down): rank r holds a slice of K; ranks' partial outputs are summed by an
all-reduce. Per-row 2-D tensors are cut along their second dimension in proportion to K (qweight
bytes: two int4 codes each; scale/zero group columns), so a group must never straddle two ranks.
1-D per-channel scales and the bias are replicated (engines add the bias once, after the reduce).

Everything else (embeddings, norms, lm_head, tensor-wide scales) is replicated. The slices are then
packed independently, so packing pads each rank's slice to the layout's tiles.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from turbopack.errors import ShapeError
from turbopack.formats import Format
from turbopack.formats.int4 import GROUP_SIZES

RANK_DIR = "rank{}"


class Parallel(str, enum.Enum):
    """How a tensor is split across ranks; the values are written to the manifest."""

    COLUMN = "column"
    ROW = "row"
    REPLICATED = "replicated"


@dataclass(frozen=True)
class TPRule:
    """A Llama-family linear and how it splits; ``unit`` is the config key counting the whole
    pieces (heads) a split must not cut, None for plain channels."""

    module: str
    parallel: Parallel
    unit: str | None = None


RULES = (
    TPRule("self_attn.q_proj", Parallel.COLUMN, "num_attention_heads"),
    TPRule("self_attn.k_proj", Parallel.COLUMN, "num_key_value_heads"),
    TPRule("self_attn.v_proj", Parallel.COLUMN, "num_key_value_heads"),
    TPRule("self_attn.o_proj", Parallel.ROW, "num_attention_heads"),
    TPRule("mlp.gate_proj", Parallel.COLUMN),
    TPRule("mlp.up_proj", Parallel.COLUMN),
    TPRule("mlp.down_proj", Parallel.ROW),
)
_RULE_RE = {rule: re.compile(rf"(.+\.)?layers\.\d+\.{re.escape(rule.module)}") for rule in RULES}


def rule_for(module: str) -> TPRule | None:
    for rule, pattern in _RULE_RE.items():
        if pattern.fullmatch(module):
            return rule
    return None


@dataclass(frozen=True)
class Slice:
    """Rank ``rank`` of ``tp`` holds [start, stop) of N (column) or K (row) of a [N, K] weight."""

    parallel: Parallel
    rank: int
    tp: int
    start: int
    stop: int

    def shape(self, full: tuple[int, int]) -> tuple[int, int]:
        n, k = full
        size = self.stop - self.start
        return {Parallel.COLUMN: (size, k), Parallel.ROW: (n, size)}.get(self.parallel, (n, k))

    def as_dict(self) -> dict:
        return {
            "parallel": self.parallel.value,
            "rank": self.rank,
            "tp": self.tp,
            "start": self.start,
            "stop": self.stop,
        }


def _units(config: dict, key: str) -> int:
    if key == "num_key_value_heads":
        return int(config.get(key) or config["num_attention_heads"])
    return int(config[key])


def plan_slices(module: str, shape: tuple[int, ...], tp: int, config: dict) -> list[Slice]:
    """One slice per rank for the linear ``module`` of ``shape`` [N, K] (replicated if not split)."""
    rule = rule_for(module) if tp > 1 and len(shape) == 2 else None
    if rule is None:
        return [Slice(Parallel.REPLICATED, r, tp, 0, shape[0] if shape else 1) for r in range(tp)]
    size = shape[0] if rule.parallel is Parallel.COLUMN else shape[1]
    dim = "N" if rule.parallel is Parallel.COLUMN else "K"
    if rule.unit is not None:
        units = _units(config, rule.unit)
        if units % tp or size % units:
            raise ShapeError(f"{module}: {rule.unit}={units} does not split into tp={tp} whole heads "
                             f"({dim}={size}); choose --tp among {divisors(units)}")
    if size % tp:
        raise ShapeError(
            f"{module}: {dim}={size} does not split into tp={tp} equal slices; choose --tp among {divisors(size)}"
        )
    step = size // tp
    return [Slice(rule.parallel, r, tp, r * step, (r + 1) * step) for r in range(tp)]


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
            out[spec.suffix] = t[sl.start:sl.stop].contiguous()
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
        slices = plan_slices(module, (t.shape[0], 1), tp, config)
        return [t[s.start:s.stop].contiguous() for s in slices]
    slices = plan_slices(module, tuple(t.shape), tp, config)
    if rule.parallel is Parallel.COLUMN:
        return [t[s.start:s.stop].contiguous() for s in slices]
    return [t[:, s.start:s.stop].contiguous() for s in slices]


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
            yield sl.rank, start, rows[:, sl.start:sl.stop].contiguous()
            continue
        lo, hi = max(start, sl.start), min(start + len(rows), sl.stop)
        if lo < hi:
            yield sl.rank, lo - sl.start, rows[lo - start:hi - start].contiguous()


def plain_shapes(name: str, shape: tuple[int, ...], tp: int, config: dict) -> list[tuple[int, ...]]:
    """Shapes of :func:`split_plain`'s outputs, without reading the tensor (for planning)."""
    return [tuple(t.shape) for t in split_plain(name, torch.empty(shape, device="meta"), tp, config)]


def rank_dir(rank: int) -> str:
    return RANK_DIR.format(rank)
