"""Whether Triton runs its CPU interpreter: the one definition (triton_env re-exports it), in a
module of its own so the runtime can ask without importing triton (~0.3-0.8 s)."""

from __future__ import annotations

import os


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET set, not 0)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "no", "off")
