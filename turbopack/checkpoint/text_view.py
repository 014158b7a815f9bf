"""Multimodal checkpoints read as their language model alone.

Gemma 3's 4B/12B/27B checkpoints are ``Gemma3ForConditionalGeneration``: a Gemma 3 text decoder
beside a vision tower and a projector, the decoder's weights under a prefix, its config nested in
``text_config`` and written sparsely (transformers fills the rest from Gemma3TextConfig's
defaults). :func:`text_view` turns such a folder into the causal LM it holds, as
``Gemma3ForCausalLM`` would save it: a complete config and the decoder's tensors under their
causal-LM names. The vision tensors are left out of the view, so every command (quantize, pack,
run, eval, export) sees a text model and writes one; the result serves text in vLLM and
transformers (Gemma3ForCausalLM), not images.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from turbopack.errors import CheckpointError, UnsupportedModelError
from turbopack.hfconfig import architectures_of
from turbopack.registry import Registry


@dataclass(frozen=True)
class TextModelOf:
    """A multimodal architecture whose language model is read as a causal LM of its own."""

    wrapper: str  # its `architectures` entry
    text_architecture: str  # the causal LM the view presents
    text_model_type: str
    #: stored-name prefix -> the causal LM's; a tensor under none of them is left out of the view
    prefixes: tuple[tuple[str, str], ...]
    #: the text config class's defaults, for the keys its config.json leaves out
    defaults: MappingProxyType
    left_out: str  # what the view drops, for the note


#: transformers 4.5x saved Gemma 3 as language_model.model.* (the Hub's files), 5.x as model.language_model.*
GEMMA3 = TextModelOf(
    "Gemma3ForConditionalGeneration", "Gemma3ForCausalLM", "gemma3_text",
    (("language_model.model.", "model."), ("model.language_model.", "model."), ("language_model.lm_head.", "lm_head."),
     ("lm_head.", "lm_head.")),
    MappingProxyType(dict(  # transformers' Gemma3TextConfig
        vocab_size=262_208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh", max_position_embeddings=131_072,
        rms_norm_eps=1e-6, pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True,
        attention_bias=False, query_pre_attn_scalar=256, sliding_window=4096, sliding_window_pattern=6,
        final_logit_softcapping=None, attn_logit_softcapping=None, rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0)),
    "the vision tower and projector",
)
WRAPPERS: Registry[TextModelOf] = Registry("multimodal architecture")
WRAPPERS.register(GEMMA3.wrapper, GEMMA3)
#: top-level keys of the wrapper's config that describe the text model too
_SHARED_KEYS = ("torch_dtype", "dtype", "transformers_version", "tie_word_embeddings")


@dataclass(frozen=True)
class TextView:
    config: dict  # the causal LM's config.json
    stored: dict[str, str]  # causal-LM tensor name -> its name in the files
    note: str  # one line for the command's summary


def text_config(config: dict, where: str) -> tuple[TextModelOf, dict] | None:
    """(the wrapper, its language model's config.json) for a multimodal ``config``; None for any
    other config (``architectures`` naming no registered wrapper)."""
    try:
        archs = architectures_of(config, where)
    except UnsupportedModelError:
        return None  # the family lookup says what is wrong with it
    spec = next((WRAPPERS.get(a) for a in archs if a in WRAPPERS), None)
    if spec is None:
        return None
    text = config.get("text_config")
    if not isinstance(text, dict):
        raise CheckpointError(f"{where}: {spec.wrapper} without a text_config object; fix config.json or "
                              f"re-download the model")
    shared = {k: config[k] for k in _SHARED_KEYS if k in config}
    return spec, {**spec.defaults, **shared, **text, "architectures": [spec.text_architecture],
                  "model_type": spec.text_model_type}


def text_view(config: dict, names: list[str], where: str) -> TextView | None:
    """The language model of a multimodal ``config`` whose files hold ``names``; None for any
    other config."""
    found = text_config(config, where)
    if found is None:
        return None
    spec, view = found
    stored = {}
    for name in names:
        to = next((new + name[len(old):] for old, new in spec.prefixes if name.startswith(old)), None)
        if to is None:
            continue
        if to in stored:
            raise CheckpointError(f"{where}: {stored[to]} and {name} are both the text model's {to}; the checkpoint "
                                  f"mixes two naming schemes, re-download it")
        stored[to] = name
    if not any(n.startswith("model.layers.") for n in stored):
        raise CheckpointError(f"{where}: a {spec.wrapper} whose files hold no text decoder layers under "
                              f"{', '.join(old for old, _ in spec.prefixes[:2])}; re-download the model")
    left = len(names) - len(stored)
    note = (f"{spec.wrapper}: its text model is read as {spec.text_architecture}; {left} tensors "
            f"({spec.left_out}) are left out")
    return TextView(view, stored, note)
