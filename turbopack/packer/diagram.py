"""A picture of one tile of a layout: which weight element (n, k) lands in which 32-bit word and
which slot (nibble, byte, half-word) of it.

The map is measured, not transcribed: it packs probe weights through the layout's own ``pack``
(so it can never disagree with the code). A first set of packs with every code equal to d (d =
0..15) records what each packed slot holds for each code value; then each element's linear index
n*K + k is written in base-16 digits, one pack per digit, and read back slot by slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from turbopack.errors import ShapeError, TurbopackError
from turbopack.formats import Format
from turbopack.formats.int4 import GROUP_SIZES, pack_nibbles

DIGITS = 16  # code values every format holds exactly (int4 0..15, int8, e4m3 integers)


@dataclass(frozen=True)
class TileMap:
    layout: str
    shape: tuple[int, int]  # (tile_n, K) drawn
    unit_bits: int  # bits per packed element slot
    slot: torch.Tensor  # [N, K] int64: slot index in the packed weight tensor (-1: not found)

    @property
    def word(self) -> torch.Tensor:
        return torch.where(self.slot >= 0, self.slot * self.unit_bits // 32, -1)

    @property
    def lane(self) -> torch.Tensor:
        """Position of the element inside its 32-bit word (0..32/unit_bits-1)."""
        return torch.where(self.slot >= 0, self.slot % (32 // self.unit_bits), -1)


def _tile_format(layout, fmt: Format) -> Format:
    """``fmt`` with a group size that divides tile_k, so one tile is a valid weight (where codes
    land does not depend on the group size; only the scales' layout does)."""
    group = getattr(fmt, "group_size", None)
    if group and layout.tile_k % group:
        return replace(fmt, group_size=max(g for g in GROUP_SIZES if layout.tile_k % g == 0))
    return fmt


def _neutral(fmt: Format, shape: tuple[int, int], codes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Arch-neutral tensors whose weight codes are ``codes`` [N, K] (values < 16), unit scales."""
    n, k = shape
    out = {}
    for spec in fmt.specs(shape):
        if spec.suffix != "qweight":
            fill = 1 if spec.dtype.is_floating_point else 8  # scale 1; int4 zero point 8 (mid-range)
            out[spec.suffix] = torch.full(spec.shape, fill, dtype=spec.dtype)
        elif tuple(spec.shape) == (n, k // 2):
            out["qweight"] = pack_nibbles(codes)
        else:
            out["qweight"] = codes.float().to(spec.dtype) if spec.dtype.is_floating_point else codes.to(spec.dtype)
    return out


def _slots(t: torch.Tensor, unit_bits: int) -> torch.Tensor:
    """The packed tensor's raw bits as int64 slot values, in memory order (little-endian)."""
    raw = t.contiguous().reshape(-1).view(torch.uint8).to(torch.int64)
    if unit_bits == 4:
        return torch.stack([raw & 0xF, raw >> 4], -1).reshape(-1)
    per = unit_bits // 8
    raw = raw.reshape(-1, per)
    return sum(raw[:, i] << (8 * i) for i in range(per))


def tile_map(layout, fmt: Format) -> TileMap:
    fmt = _tile_format(layout, fmt)
    shape = (layout.tile_n, layout.tile_k)
    n, k = shape

    def packed_slots(codes: torch.Tensor) -> torch.Tensor:
        packed = layout.pack(fmt, _neutral(fmt, shape, codes), shape)
        weights = packed.get("qweight", max(packed.values(), key=lambda t: t.numel() * t.element_size()))
        pad = layout.padding(shape)
        unit_bits = weights.numel() * weights.element_size() * 8 // (pad.n_pad * pad.k_pad)
        if unit_bits not in (4, 8, 16, 32):
            raise ShapeError(f"{layout.name.value}: {unit_bits} bits per element; cannot draw it")
        return _slots(weights, unit_bits), unit_bits

    table = []
    for d in range(DIGITS):
        slots, unit_bits = packed_slots(torch.full(shape, d, dtype=torch.uint8))
        table.append(slots)
    table = torch.stack(table, -1)  # [slots, DIGITS]: what each slot holds for each code value
    index = torch.arange(n * k).reshape(n, k)
    found = torch.zeros(table.shape[0], dtype=torch.int64)
    for p in range(max(1, math.ceil(math.log(n * k, DIGITS)))):
        digit = (index // DIGITS**p) % DIGITS
        slots, _ = packed_slots(digit.to(torch.uint8))
        match = (table == slots[:, None]).int().argmax(-1)  # which code value each slot shows
        found += match * DIGITS**p
    varies = (table != table[:, :1]).any(-1)  # padding slots hold the same value whatever the code
    slot = torch.full((n * k,), -1, dtype=torch.int64)
    live = torch.nonzero(varies).flatten()
    ok = found[live] < n * k
    slot[found[live][ok]] = live[ok]
    return TileMap(layout.name.value, shape, unit_bits, slot.reshape(n, k))


def draw(path: str | Path, layout, fmt: Format, label: str = "") -> Path:
    """Write a PNG of one tile of ``layout`` (needs matplotlib: the ``diagram`` extra)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise TurbopackError("--layout-diagram needs matplotlib; pip install turbopack[diagram]") from None
    tm = tile_map(layout, fmt)
    n, k = tm.shape
    fig = Figure(figsize=(15, 5.6), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, data, title in (
        (axes[0], tm.word, "32-bit word index"),
        (axes[1], tm.lane, f"slot in word ({tm.unit_bits}-bit)"),
    ):
        im = ax.imshow(data.numpy(), cmap="viridis", interpolation="nearest", aspect="auto")
        ax.set(title=title, xlabel="k (input channel)", ylabel="n (output channel)")
        fig.colorbar(im, ax=ax, shrink=0.8)
    z = min(8, n, k)
    axes[2].imshow(tm.word[:z, :z].numpy(), cmap="viridis", interpolation="nearest")
    for i in range(z):
        for j in range(z):
            axes[2].text(
                j, i, f"{int(tm.word[i, j])}.{int(tm.lane[i, j])}", ha="center", va="center", fontsize=7, color="w"
            )
    axes[2].set(title=f"top-left {z}x{z}: word.slot", xlabel="k", ylabel="n")
    fig.suptitle(f"{tm.layout}: where weight code (n, k) of one {n}x{k} tile lands in the packed qweight"
                 + f" — {fmt.name.value}" + (f" — {label}" if label else ""))
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
