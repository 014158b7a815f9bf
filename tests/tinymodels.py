"""Tiny random Hugging Face models written to disk (importable by any test: `from tinymodels import ...`)."""

from __future__ import annotations

from pathlib import Path

import torch


def _randomize(model: torch.nn.Module, seed: int) -> None:
    # HF initializes norms to 1 and biases to 0, which would hide bugs in how we read them.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05 + (1.0 if p.dim() == 1 else 0.0))


def make_tiny_model(folder: Path, arch: str = "llama", seed: int = 0, **overrides) -> Path:
    import transformers

    dims = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    dims.update(overrides)
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
           "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM)}[arch]
    torch.manual_seed(seed)
    model = cls[1](cls[0](**dims))
    _randomize(model, seed)
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    return folder
