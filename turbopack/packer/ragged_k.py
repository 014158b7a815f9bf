"""Layers whose K the int4 group size does not divide (e.g. down_proj with intermediate 688 and
-g 64): what peers offer, as an explicit choice (``--k-fallback``), never silently.

* ``group``: the largest supported group size that divides K, for those layers only (AutoGPTQ /
  llm-compressor style per-layer group override); the rest keep the requested group size.
* ``w8``: those layers as w8a16 (int8 per output channel), as mixed-precision recipes do.
* ``refuse`` (default): stop with the layer, K, and these choices (or ``--ignore`` to keep it in bf16).

Each module's format is recorded in the manifest; pack, load and verify read formats per module.
A folder with mixed formats cannot be exported to compressed-tensors (one scheme per folder).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from turbopack.errors import ShapeError
from turbopack.formats import Format, FormatName, get_format
from turbopack.formats.int4 import GROUP_SIZES


class KFallback(str, Enum):
    REFUSE = "refuse"
    GROUP = "group"
    W8 = "w8"


def _smaller_group(fmt: Format, k: int) -> Format | None:
    fits = [g for g in GROUP_SIZES if k % g == 0 and g < fmt.group_size]
    return get_format("w4a16", group_size=max(fits), sym=fmt.sym, scale_dtype=fmt.scale_dtype) if fits else None


def _w8(fmt: Format, k: int) -> Format | None:
    return get_format("w8a16")


FALLBACKS: dict[KFallback, Callable[[Format, int], Format | None]] = {
    KFallback.GROUP: _smaller_group,
    KFallback.W8: _w8,
}


def parse(value: str | KFallback | None) -> KFallback:
    try:
        return KFallback(value or KFallback.REFUSE)
    except ValueError:
        raise ShapeError(f"--k-fallback {value!r}: use one of {', '.join(k.value for k in KFallback)}") from None


def format_for(fmt: Format, where: str, shape: tuple[int, ...], fallback: KFallback) -> Format:
    """``fmt`` when it takes ``shape``; else the fallback's format for this layer (or the error)."""
    try:
        fmt.check_shape(where, shape)
        return fmt
    except ShapeError:
        if fallback is KFallback.REFUSE or fmt.name != FormatName.W4A16:
            raise
    alt = FALLBACKS[fallback](fmt, shape[1])
    if alt is None:
        raise ShapeError(f"{where}: K={shape[1]}: no int4 group size smaller than {fmt.group_size} divides it; "
                         f"use --k-fallback w8 or --ignore it")
    alt.check_shape(where, shape)
    return alt


def fallback_formats(ckpt, fmt: Format, sel, k_fallback: str | None) -> dict[str, Format]:
    """{weight: format} for the selected layers of ``ckpt`` that ``k_fallback`` moves off ``fmt``
    (none by default: ``refuse`` lets ``fmt.check_shape`` stop the run with the choices)."""
    fallback = parse(k_fallback)
    if fallback is KFallback.REFUSE:
        return {}
    out = {}
    for name, entry in ckpt.tensors.items():
        if sel.reason_skipped(name, len(entry.shape)) is None:
            f = format_for(fmt, f"{ckpt.location[name].name}:{name}", entry.shape, fallback)
            if f != fmt:
                out[name] = f
    return out
