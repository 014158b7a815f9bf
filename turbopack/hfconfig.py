"""Which architecture a Hugging Face config.json describes, read as transformers reads it.

``AutoModelForCausalLM`` picks the model class from ``model_type`` (CONFIG_MAPPING, then the
causal-LM mapping), not from ``architectures``; configs written by hand or by some converters
have no ``architectures``. So: ``architectures`` when it names a class, else the causal-LM class
of ``model_type``. Shared by the packer (families) and the runtime (ModelConfig).
"""

from __future__ import annotations

from turbopack.errors import UnsupportedModelError

#: model_type -> the class AutoModelForCausalLM builds for it (for the families we support)
CAUSAL_LM_OF_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}


def architectures_of(config: dict, where: str = "config.json") -> list[str]:
    """The architecture names of ``config``: its ``architectures`` list, or (absent, null or
    empty) the one transformers derives from ``model_type``; [] when neither says anything."""
    archs = config.get("architectures")
    if archs is not None and (not isinstance(archs, list) or not all(isinstance(a, str) for a in archs)):
        raise UnsupportedModelError(f"{where}: architectures is {archs!r}, expected a list such as [\"LlamaForCausalLM\"]; fix config.json")
    if archs:
        return archs
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in CAUSAL_LM_OF_MODEL_TYPE:
        return [CAUSAL_LM_OF_MODEL_TYPE[model_type]]
    if model_type is None:
        raise UnsupportedModelError(f"{where}: neither architectures nor model_type is set; add \"model_type\": \"llama\" "
                                    f"(or mistral, qwen2) to config.json")
    return []
