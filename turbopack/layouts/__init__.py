"""Hardware-aware layouts: how a quantized weight sits in memory for one GPU architecture.

    >>> choice = select(fmt, "sm90", (N, K))          # layout + kernel config + padding
    >>> layout = get_layout(choice.layout)
    >>> packed = layout.pack(fmt, q, (N, K))          # q: the format's arch-neutral tensors
    >>> assert layout.unpack(fmt, packed, (N, K))     # == q, bit for bit
    >>> y = emulate_linear(x, fmt, layout, packed, (N, K))   # CPU oracle of the GPU kernel

The on-disk spec of every layout is docs/layouts.md.
"""

from __future__ import annotations

from typing import Any

from turbopack.layouts.archs import ARCHS, Arch, ArchName, arch_for_capability, detect_arch, get_arch, resolve_arch
from turbopack.layouts.base import Layout, LayoutName, Padding
from turbopack.layouts.fp8 import FP8RowMajor, FP8T16x64Upcast
from turbopack.layouts.int8 import I8RowMajor, I8T16x64, I8T64x64
from turbopack.layouts.nvfp4 import NVFP4T16x64
from turbopack.layouts.w4 import W4T16x64, W4T64x64
from turbopack.registry import Registry

LAYOUTS: Registry[Layout] = Registry("layout")
for _cls in (W4T16x64, W4T64x64, I8T16x64, I8T64x64, I8RowMajor, FP8T16x64Upcast, FP8RowMajor, NVFP4T16x64):
    LAYOUTS.register(_cls.name, _cls())


def get_layout(name: str | LayoutName | Layout) -> Layout:
    """A layout by its on-disk name (unknown names list the registered ones)."""
    return name if isinstance(name, Layout) else LAYOUTS.get(name)


from turbopack.layouts.selection import Choice, load_table, select, supported  # noqa: E402  (needs LAYOUTS)


def __getattr__(name: str) -> Any:
    # The emulator imports numba (~0.5 s); only pay for it when it is used.
    if name in ("emulate_linear", "reference_linear"):
        from turbopack.layouts import emulate

        return getattr(emulate, name)
    raise AttributeError(f"module 'turbopack.layouts' has no attribute {name!r}")


__all__ = [
    "ARCHS", "Arch", "ArchName", "Choice", "LAYOUTS", "Layout", "LayoutName", "Padding",
    "arch_for_capability", "detect_arch", "emulate_linear", "get_arch", "get_layout", "load_table",
    "reference_linear", "resolve_arch", "select", "supported",
]
