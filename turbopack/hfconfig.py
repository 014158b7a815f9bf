"""Which architecture a Hugging Face config.json describes, read as transformers reads it.

``AutoModelForCausalLM`` picks the model class from ``model_type`` (CONFIG_MAPPING, then the
causal-LM mapping), not from ``architectures``; configs written by hand or by some converters
have no ``architectures``. So: ``architectures`` when it names a class, else the causal-LM class
of ``model_type``. Shared by the packer (families) and the runtime (ModelConfig).
"""

from __future__ import annotations

import json
from pathlib import Path

from turbopack.errors import UnsupportedModelError

#: model_type -> the class AutoModelForCausalLM builds for it (for the families we support)
CAUSAL_LM_OF_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "gemma3": "Gemma3ForConditionalGeneration",  # read as its text model (checkpoint.text_view)
    "phi3": "Phi3ForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
}


def architectures_of(config: dict, where: str = "config.json") -> list[str]:
    """The architecture names of ``config``: its ``architectures`` list, or (absent, null or
    empty) the one transformers derives from ``model_type``; [] when neither says anything."""
    archs = config.get("architectures")
    if archs is not None and (not isinstance(archs, list) or not all(isinstance(a, str) for a in archs)):
        raise UnsupportedModelError(
            f'{where}: architectures is {archs!r}, expected a list such as ["LlamaForCausalLM"]; fix config.json'
        )
    if archs:
        return archs
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in CAUSAL_LM_OF_MODEL_TYPE:
        return [CAUSAL_LM_OF_MODEL_TYPE[model_type]]
    if model_type is None:
        raise UnsupportedModelError(
            f'{where}: neither architectures nor model_type is set; add "model_type": "llama" '
            f"(or mistral, qwen2) to config.json"
        )
    return []


#: quantization_config.quant_method values of checkpoints that `turbopack convert` reads
CONVERTIBLE = ("compressed-tensors", "gptq", "awq")
#: the side files AutoGPTQ and AutoAWQ write instead of a quantization_config
SIDE_CONFIGS = {"quantize_config.json": "gptq", "quant_config.json": "awq"}


def foreign_quantization(folder: Path, manifest_kind: str | None = None) -> str | None:
    """The quant method of a quantized checkpoint that is not ours to run directly (a
    compressed-tensors export of ours, or another tool's GPTQ/AWQ/compressed-tensors folder)."""
    if manifest_kind == "compressed-tensors":
        return manifest_kind
    if manifest_kind is not None:
        return None
    for name, method in SIDE_CONFIGS.items():
        if (folder / name).is_file():
            return method
    try:
        qc = json.loads((folder / "config.json").read_text()).get("quantization_config") or {}
    except (OSError, ValueError, AttributeError):
        return None
    method = qc.get("quant_method") if isinstance(qc, dict) else None
    return method if method in CONVERTIBLE else None


def convert_hint(folder: Path, method: str, command: str) -> str:
    return (f"{folder}: a {method} checkpoint, which {command} does not read directly; "
            f"`turbopack convert {folder} -o OUT` turns it into the arch-neutral folder that {command} takes")
