"""The Python API; each function is what the CLI command of the same name calls.

    import turbopack
    turbopack.quantize("Llama-3-8B", "llama-w4", format="w4a16", group_size=128)
    turbopack.pack("llama-w4", "llama-w4-sm90", arch=("sm90",))
    report = turbopack.check()
"""

from __future__ import annotations

import importlib

# name -> "module:attribute"; imported on first use so `import turbopack` stays light.
_EXPORTS = {
    "quantize": "turbopack.packer.quantize:quantize",
    "pack": "turbopack.packer.pack:pack",
    "verify": "turbopack.packer.verify:verify",
    "inspect": "turbopack.packer.inspect:inspect",
    "check": "turbopack.evaluation.check:run_check",
    "get_format": "turbopack.formats:get_format",
    "load": "turbopack.inference.api:load",
    "load_hf": "turbopack.inference.hf_dropin:load_hf",
    "write_synthetic": "turbopack.packer.synthetic:write_synthetic",
}


def __getattr__(name: str):
    try:
        target = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"turbopack has no attribute {name!r}") from None
    from turbopack.checkpoint.hub import enable_hub  # imports torch: not at `import turbopack`

    enable_hub()
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def __dir__() -> list[str]:
    return sorted(_EXPORTS)
