"""The one place that decides how Triton runs: imported or absent, compiled or interpreted.

Every kernel module takes ``triton``, ``tl`` and :func:`interpreting` from here, so a value such
as ``TRITON_INTERPRET=true`` means the same thing to dispatch, the linears and attention (two
copies of this check once disagreed: ``== "1"`` against ``not in ("", "0")``).
"""

from __future__ import annotations

from turbopack.inference.kernels.interpret import interpreting  # noqa: F401 (re-exported)

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is a GPU/test extra
    triton = None
    tl = None
