"""turbopack: offline LLM weight quantization and per-architecture packing.

The Python API mirrors the CLI (see turbopack/api.py): ``turbopack.quantize(...)`` is
``turbopack quantize``.
"""

import importlib

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so that `import turbopack` stays cheap (no torch import for --help).
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module("turbopack.api"), name)
