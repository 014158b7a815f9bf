"""turbopack: offline LLM weight quantization and per-architecture packing.

The Python API mirrors the CLI: ``turbopack.quantize(...)`` is ``turbopack quantize``.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so that `import turbopack` stays cheap (no torch import for --help).
    from turbopack import api

    return getattr(api, name)
