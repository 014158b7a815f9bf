"""Supported model families and which of their tensors are linear weights.

Data, not branches: each family names its HF architecture string and the regex of its linear
weights. lm_head is quantized only on request; embeddings and norms never are.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from turbopack.errors import UnsupportedModelError

_LLAMA_LINEARS = r"model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight"


@dataclass(frozen=True)
class Family:
    architecture: str
    linear_pattern: str
    has_qkv_bias: bool = False


FAMILIES = {
    f.architecture: f
    for f in (
        Family("LlamaForCausalLM", _LLAMA_LINEARS),
        Family("MistralForCausalLM", _LLAMA_LINEARS),
        Family("Qwen2ForCausalLM", _LLAMA_LINEARS, has_qkv_bias=True),
    )
}


def family_of(config: dict, where: str = "config.json") -> Family:
    archs = config.get("architectures") or []
    for arch in archs:
        if arch in FAMILIES:
            return FAMILIES[arch]
    got = ", ".join(archs) or "none"
    raise UnsupportedModelError(f"{where}: architecture {got} is not supported; supported: {', '.join(FAMILIES)}")


@dataclass(frozen=True)
class Selection:
    """Which tensors to quantize: the family's linears (+ lm_head if asked) minus --ignore globs."""

    family: Family
    include_lm_head: bool = False
    ignore: tuple[str, ...] = ()

    def reason_skipped(self, name: str, ndim: int) -> str | None:
        """None if ``name`` is quantized, else why it is kept as is (recorded in the manifest)."""
        if not name.endswith(".weight") or ndim != 2:
            return "not a 2-D weight"
        module = name.removesuffix(".weight")
        for pat in self.ignore:
            if fnmatch.fnmatchcase(module, pat) or fnmatch.fnmatchcase(name, pat):
                return f"--ignore {pat}"
        if name == "lm_head.weight":
            return None if self.include_lm_head else "lm_head (pass --include-lm-head to quantize it)"
        if re.fullmatch(self.family.linear_pattern, name):
            return None
        return "not a decoder linear (embedding/norm/other)"
