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


#: per family: (transformers config class name, overrides that exercise what sets it apart)
FAMILIES = {
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {}),
    "mistral": ("MistralConfig", {}),
    "qwen3": ("Qwen3Config", dict(head_dim=32)),  # explicit head_dim != hidden / heads
    # a window of 8 so that sequences of more than 8 tokens reach the band mask of the sliding
    # layers; soft-caps small enough to bend this tiny model's scores and logits
    "gemma2": ("Gemma2Config", dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
                                    attn_logit_softcapping=0.5, final_logit_softcapping=2.0)),
    "gemma3": ("Gemma3TextConfig", dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
                                        sliding_window_pattern=2, rope_parameters={
                                            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
                                            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})),
    "phi3": ("Phi3Config", dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)),  # default ids exceed vocab 128
    # 4 experts, 2 per token; Qwen2-MoE: a shared expert and a dense layer (mlp_only_layers)
    "mixtral": ("MixtralConfig", dict(num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": ("Qwen2MoeConfig", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                                         shared_expert_intermediate_size=64, mlp_only_layers=[1])),
    "qwen3_moe": ("Qwen3MoeConfig", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                                         norm_topk_prob=True, head_dim=32)),
}


#: multimodal checkpoints read as their text model: (config class, the family of its text_config,
#: the rest); Gemma 3's vision tower is a one-layer SigLIP on a 28-pixel image (2x2 patches, 4 tokens)
MULTIMODAL = {
    "gemma3_mm": ("Gemma3Config", "gemma3", dict(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14),
        mm_tokens_per_image=4, image_token_index=127, boi_token_index=125, eoi_token_index=126)),
}


def tiny_config(arch: str = "llama", **overrides):
    """transformers' own config object of a tiny model of family ``arch``."""
    import copy

    import transformers

    if arch in MULTIMODAL:
        name, text_family, rest = MULTIMODAL[arch]
        return getattr(transformers, name)(text_config=tiny_config(text_family, **overrides),
                                           **copy.deepcopy(rest))
    name, family = FAMILIES[arch]
    dims = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    dims.update(copy.deepcopy(family))
    dims.update(overrides)
    return getattr(transformers, name)(**dims)


def make_tiny_model(folder: Path, arch: str = "llama", seed: int = 0, **overrides) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **overrides))  # gemma3: ForConditionalGeneration
    _randomize(model, seed)
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    return folder


def write_word_tokenizer(folder: Path, n_words: int = 120) -> None:
    """A word-level tokenizer.json over "w0".."w{n-1}" (ids 1..n, 0 unknown): fits the vocab of 128."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(n_words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
