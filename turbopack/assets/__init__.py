"""Data files bundled with turbopack.

* ``tiny-llama/``: a small, genuinely trained ``LlamaForCausalLM`` (bf16
  safetensors, byte-level BPE tokenizer, pre-tokenized ids), the default model
  of ``turbopack check`` and of many tests; see ``tiny-llama/README.md``.
* ``text/``: the public-domain Shakespeare text it was trained
  (``train.txt``) and is evaluated (``heldout.txt``) on; see ``text/SOURCE.md``.

Use the helpers below rather than hard-coding paths.
"""

from __future__ import annotations

import pathlib

__all__ = ["bundled_model_dir", "bundled_text"]

_ASSETS = pathlib.Path(__file__).resolve().parent


def bundled_model_dir() -> pathlib.Path:
    """Directory of the bundled tiny Llama model (loadable with ``from_pretrained``)."""
    return _ASSETS / "tiny-llama"


def bundled_text(name: str) -> pathlib.Path:
    """Path of a bundled text file: ``"train"``/``"heldout"`` (``.txt`` optional)."""
    if not name.endswith(".txt"):
        name = f"{name}.txt"
    path = _ASSETS / "text" / name
    if path.parent != _ASSETS / "text" or not path.is_file():
        raise FileNotFoundError(f"no bundled text {name!r} in {_ASSETS / 'text'}")
    return path
