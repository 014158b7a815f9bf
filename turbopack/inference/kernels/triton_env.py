"""The one place that decides how Triton runs: imported or absent, compiled or interpreted.

Every kernel module takes ``triton``, ``tl`` and :func:`interpreting` from here, so a value such
as ``TRITON_INTERPRET=true`` means the same thing to dispatch, the linears and attention (two
copies of this check once disagreed: ``== "1"`` against ``not in ("", "0")``).
"""

from __future__ import annotations

import os

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is a GPU/test extra
    triton = None
    tl = None


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET set, not 0)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "no", "off")
