"""One linear packed for one arch: layout selection with the module named in errors, and the pure
pack step that the packer (folders) and the runtime (pack at load) both call.

Pure functions of (format, arch-neutral tensors, shape, arch): a packed folder is a cache of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from turbopack.errors import TurbopackError
from turbopack.formats import Format
from turbopack.layouts import get_layout
from turbopack.layouts.selection import select


@dataclass
class PackedModule:
    """One linear packed for one arch: ``tensors`` by suffix, ``choice`` from layouts.selection."""

    name: str
    shape: tuple[int, int]
    choice: Any
    tensors: dict[str, torch.Tensor]

    @property
    def layout(self) -> Any:
        return layout_of(self.choice)


def layout_of(choice: Any) -> Any:
    """The Layout object of a selection Choice (which names it)."""
    return get_layout(choice.layout)


def select_layout(fmt: Format, arch: str, shape: tuple[int, int], name: str = "") -> Any:
    """layouts.selection.select, with the module named in any error it raises."""
    try:
        return select(fmt, arch, tuple(shape))
    except TurbopackError as e:
        if name and name not in str(e):
            raise type(e)(f"{name}: {e}") from None
        raise


def pack_module(fmt: Format, q: dict[str, torch.Tensor], shape: tuple[int, int], arch: str, *,
                name: str = "", choice: Any = None) -> PackedModule:
    """Pack one linear's arch-neutral tensors ``q`` (a whole weight or one TP slice) for ``arch``."""
    choice = choice if choice is not None else select_layout(fmt, arch, shape, name)
    packed = layout_of(choice).pack(fmt, q, tuple(shape))
    for spec in layout_of(choice).packed_specs(fmt, tuple(shape)):
        t = packed.get(spec.suffix)
        if t is None or t.dtype != spec.dtype or tuple(t.shape) != tuple(spec.shape):
            got = "missing" if t is None else f"{t.dtype} {list(t.shape)}"
            raise RuntimeError(f"{name}.{spec.suffix}: layout {layout_of(choice).name.value} packed {got}, "
                               f"its packed_specs say {spec.dtype} {list(spec.shape)}")
    return PackedModule(name, tuple(shape), choice, packed)
