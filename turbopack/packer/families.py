"""Supported model families and which of their tensors are linear weights.

Data, not branches: each family names its HF architecture string and the regex of its linear
weights. lm_head is quantized only on request; embeddings and norms never are.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from turbopack.errors import CheckpointError, UnsupportedModelError
from turbopack.hfconfig import architectures_of

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


#: linears that serving engines (vLLM, our runtime) run as one matmul, by their last name part
FUSED_LINEARS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
_LINEAR_NAME = re.compile(r"(?P<prefix>.*\.)(?P<proj>\w+)\.weight")


def fused_group(name: str) -> tuple[str, ...]:
    """The weights fused with linear weight ``name`` (itself included): model.layers.3.self_attn.
    k_proj.weight -> its layer's q, k and v weights; a linear fused with nothing -> (name,)."""
    m = _LINEAR_NAME.fullmatch(name)
    for group in FUSED_LINEARS:
        if m and m["proj"] in group:
            return tuple(f"{m['prefix']}{proj}.weight" for proj in group)
    return (name,)


def family_of(config: dict, where: str = "config.json") -> Family:
    archs = architectures_of(config, where)
    for arch in archs:
        if arch in FAMILIES:
            return FAMILIES[arch]
    got = ", ".join(archs) or f"none (model_type {config.get('model_type')!r})"
    raise UnsupportedModelError(f"{where}: architecture {got} is not supported; supported: {', '.join(FAMILIES)}")


#: Llama-family linear -> (config keys its shape comes from, its [N, K] from the dims)
_LINEAR_SHAPES = {
    "self_attn.q_proj": (("num_attention_heads", "head_dim", "hidden_size"), lambda d: (d["q"], d["hidden_size"])),
    "self_attn.k_proj": (("num_key_value_heads", "head_dim", "hidden_size"), lambda d: (d["kv"], d["hidden_size"])),
    "self_attn.v_proj": (("num_key_value_heads", "head_dim", "hidden_size"), lambda d: (d["kv"], d["hidden_size"])),
    "self_attn.o_proj": (("hidden_size", "num_attention_heads", "head_dim"), lambda d: (d["hidden_size"], d["q"])),
    "mlp.gate_proj": (("intermediate_size", "hidden_size"), lambda d: (d["intermediate_size"], d["hidden_size"])),
    "mlp.up_proj": (("intermediate_size", "hidden_size"), lambda d: (d["intermediate_size"], d["hidden_size"])),
    "mlp.down_proj": (("hidden_size", "intermediate_size"), lambda d: (d["hidden_size"], d["intermediate_size"])),
}
_LAYER_LINEAR = re.compile(r"model\.layers\.(\d+)\.(\w+\.\w+)\.weight")
_FIX = "config.json does not belong to these weights; fix it or re-download the model"


def config_dims(config: dict, where: str = "config.json") -> dict[str, int]:
    """The Llama-family dims of a config (positive ints), plus q/kv: the q and k/v projection widths."""
    dims = {}
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
    ):
        v = config.get(key)
        if v is None and key in ("num_key_value_heads", "head_dim"):
            continue  # optional: default to num_attention_heads and hidden_size / num_attention_heads
        if type(v) is not int or v < 1:
            raise CheckpointError(
                f"{where}: {key} is {v!r}, not a positive integer; fix config.json or re-download the model"
            )
        dims[key] = v
    dims.setdefault("num_key_value_heads", dims["num_attention_heads"])
    dims.setdefault("head_dim", dims["hidden_size"] // dims["num_attention_heads"])
    dims["q"] = dims["num_attention_heads"] * dims["head_dim"]
    dims["kv"] = dims["num_key_value_heads"] * dims["head_dim"]
    return dims


def check_dims(config: dict, shapes: dict[str, tuple[int, ...]], where: str = "config.json",
               files: dict[str, str] | None = None) -> None:
    """Fail at the start, not hours in, when config.json's dims disagree with the weights' shapes."""
    dims = config_dims(config, where)
    for name, shape in shapes.items():
        m = _LAYER_LINEAR.fullmatch(name)
        if m is None or m.group(2) not in _LINEAR_SHAPES:
            continue
        file = f" in {files[name]}" if files and name in files else ""
        if int(m.group(1)) >= dims["num_hidden_layers"]:
            raise CheckpointError(
                f"{where}: num_hidden_layers={dims['num_hidden_layers']} but {name}{file} exists; {_FIX}"
            )
        keys, expect = _LINEAR_SHAPES[m.group(2)]
        want = expect(dims)
        if tuple(shape) != want:
            said = ", ".join(f"{k}={dims[k]}" for k in keys)
            raise CheckpointError(f"{where}: {said} make {name} {list(want)}, but it is {list(shape)}{file}; {_FIX}")


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
