"""GPU kernels that consume the packed layouts (Triton; docs/kernels.md says which reads what).

The entry point is :func:`turbopack.inference.kernels.dispatch.linear`; it is imported lazily here
so that importing this package does not import triton.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "linear":
        from turbopack.inference.kernels.dispatch import linear

        return linear
    raise AttributeError(f"module 'turbopack.inference.kernels' has no attribute {name!r}")
