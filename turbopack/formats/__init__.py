"""Quantization formats: what a quantized tensor is (arch-neutral).

    >>> fmt = get_format("w4a16", group_size=64, sym=True)
    >>> q = fmt.quantize(w)            # {"qweight": ..., "scales": ...}
    >>> w_hat = fmt.dequantize(q)
"""

from __future__ import annotations

from typing import Any

from turbopack.formats.base import DTYPES, Format, FormatName, TensorSpec, check_finite, dtype_name
from turbopack.formats.fp8 import FP8
from turbopack.formats.int4 import W4A16
from turbopack.formats.int8 import W8A8, W8A16
from turbopack.formats.nvfp4 import NVFP4
from turbopack.registry import Registry

FORMATS: Registry[type[Format]] = Registry("format")
for _cls in (W4A16, W8A16, W8A8, FP8, NVFP4):
    FORMATS.register(_cls.name, _cls)


def get_format(name: str | FormatName, **params: Any) -> Format:
    """Build a format from its on-disk name and parameters (unknown names list the known ones)."""
    cls = FORMATS.get(name)
    params = {k: v for k, v in params.items() if k != "format" and v is not None}
    return cls(**params)


def format_from_params(params: dict[str, Any]) -> Format:
    """Inverse of :meth:`Format.params` (as read back from a manifest or config.json)."""
    return get_format(params["format"], **params)


__all__ = [
    "DTYPES", "FORMATS", "FP8", "NVFP4", "Format", "FormatName", "TensorSpec", "W4A16", "W8A16", "W8A8",
    "check_finite", "dtype_name", "format_from_params", "get_format",
]
