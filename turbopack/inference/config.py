"""The reference model's config, read from a Hugging Face config.json through registered family data.

Each supported architecture is an :class:`ArchSpec`: which config keys it reads and which of the
reference model's switches it turns on (docs/families.md has the table). ``ModelConfig`` is the
result: plain numbers and switches, nothing family-named, so model.py never branches on a name.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

from turbopack.errors import CheckpointError, UnsupportedModelError
from turbopack.hfconfig import architectures_of
from turbopack.inference.moe_config import MIXTRAL, QWEN2_MOE, QWEN3_MOE, MoEConfig, MoEStyle, moe_from_hf
from turbopack.inference.rope import RopeScaling, check_rotary, rope_from_hf
from turbopack.registry import Registry


class NormStyle(str, enum.Enum):
    LLAMA = "llama"  # weight * round(x_hat): Llama, Mistral, Qwen, Phi-3
    GEMMA = "gemma"  # round(x_hat * (1 + weight)), in fp32: Gemma 2/3


class Activation(str, enum.Enum):
    SILU = "silu"
    GELU_TANH = "gelu_pytorch_tanh"


#: Hugging Face activation names (ACT2FN keys) -> ours
HF_ACTIVATIONS = {"silu": Activation.SILU, "swish": Activation.SILU, "gelu_pytorch_tanh": Activation.GELU_TANH}


class Sliding(str, enum.Enum):
    """How a family says which layers use sliding-window attention."""

    NONE = "none"
    ALL = "all"  # every layer (sliding_window): sequences are capped at the window
    QWEN = "qwen"  # use_sliding_window and layers >= max_window_layers: capped likewise
    IF_USED = "if_used"  # use_sliding_window: capped likewise (Qwen MoE: which layers slide varies)
    LAYER_TYPES = "layer_types"  # per layer (layer_types or a pattern): a band mask on those layers


class BiasStyle(str, enum.Enum):
    NONE = "none"
    CONFIG = "config"  # attention_bias switches q, k, v and o (Llama, Qwen3, Gemma)
    QKV = "qkv"  # always q, k and v, never o (Qwen2)


@dataclass(frozen=True)
class ArchSpec:
    """What a Hugging Face architecture needs of the reference model (all off: Llama without bias)."""

    architecture: str
    model_type: str
    bias: BiasStyle = BiasStyle.NONE
    mlp_bias: bool = False  # reads mlp_bias (Llama only)
    activation_key: str = "hidden_act"
    norm: NormStyle = NormStyle.LLAMA
    qk_norm: bool = False  # per-head RMSNorm on q and k before rotary (Qwen3, Gemma 3)
    sandwich_norms: bool = False  # norms after attention and around the MLP (Gemma)
    scaled_embeddings: bool = False  # embeddings * sqrt(hidden_size) in their dtype (Gemma)
    query_pre_attn_scalar: bool = False  # attention scale 1/sqrt(query_pre_attn_scalar) (Gemma)
    softcapping: bool = False  # reads attn_logit_softcapping / final_logit_softcapping (Gemma)
    sliding: Sliding = Sliding.NONE
    sliding_pattern: int = 0  # LAYER_TYPES without layer_types: every pattern-th layer is global
    local_rope: bool = False  # sliding layers have their own rope base (Gemma 3)
    default_rope_theta: float = 10000.0
    fused: bool = False  # the files hold qkv_proj and gate_up_proj (Phi-3)
    partial_rotary: bool = False  # reads partial_rotary_factor (Phi-3)
    phi3_rope: bool = False  # Phi-3's rope keys: "yarn" means LongRoPE (rope.rope_from_hf)
    moe: MoEStyle | None = None  # mixture of experts (turbopack.inference.moe_config)


ARCHS: Registry[ArchSpec] = Registry("architecture")
for _spec in (
    ArchSpec("LlamaForCausalLM", "llama", bias=BiasStyle.CONFIG, mlp_bias=True),
    ArchSpec("MistralForCausalLM", "mistral", sliding=Sliding.ALL),
    ArchSpec("Qwen2ForCausalLM", "qwen2", bias=BiasStyle.QKV, sliding=Sliding.QWEN),
    ArchSpec("Qwen3ForCausalLM", "qwen3", bias=BiasStyle.CONFIG, qk_norm=True, sliding=Sliding.QWEN),
    ArchSpec("Gemma2ForCausalLM", "gemma2", bias=BiasStyle.CONFIG, activation_key="hidden_activation",
             norm=NormStyle.GEMMA, sandwich_norms=True, scaled_embeddings=True, query_pre_attn_scalar=True,
             softcapping=True, sliding=Sliding.LAYER_TYPES, sliding_pattern=2),
    ArchSpec("Gemma3ForCausalLM", "gemma3_text", bias=BiasStyle.CONFIG, activation_key="hidden_activation",
             norm=NormStyle.GEMMA, qk_norm=True, sandwich_norms=True, scaled_embeddings=True,
             query_pre_attn_scalar=True, softcapping=True, sliding=Sliding.LAYER_TYPES, sliding_pattern=6,
             local_rope=True, default_rope_theta=1_000_000.0),
    ArchSpec("Phi3ForCausalLM", "phi3", sliding=Sliding.ALL, fused=True, partial_rotary=True, phi3_rope=True),
    ArchSpec("MixtralForCausalLM", "mixtral", sliding=Sliding.ALL, moe=MIXTRAL),
    ArchSpec("Qwen2MoeForCausalLM", "qwen2_moe", bias=BiasStyle.QKV, sliding=Sliding.IF_USED, moe=QWEN2_MOE),
    ArchSpec("Qwen3MoeForCausalLM", "qwen3_moe", bias=BiasStyle.CONFIG, qk_norm=True, sliding=Sliding.IF_USED,
             moe=QWEN3_MOE),
):
    ARCHS.register(_spec.architecture, _spec)

def arch_spec(hf: dict, where: str = "config.json") -> ArchSpec:
    """The spec of the first supported architecture of ``hf``; else one line naming the supported ones."""
    archs = architectures_of(hf, where)
    for arch in archs:
        if arch in ARCHS:
            return ARCHS.get(arch)
    got = ", ".join(archs) or f"none (model_type {hf.get('model_type')!r})"
    raise UnsupportedModelError(f"{where}: architecture {got} is not supported; supported: {', '.join(ARCHS)}")


@dataclass(frozen=True)
class ModelConfig:
    vocab: int
    hidden: int
    intermediate: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q/k/v
    o_proj_bias: bool = False  # Llama's attention_bias covers o_proj too; Qwen2's biases do not
    mlp_bias: bool = False
    # Sliding-window attention equals full causal attention while the sequence fits in the window,
    # so a window on every layer is recorded and longer sequences refused (no band mask, and the
    # fused GPU path stays usable). Per-layer windows (layer_windows) do get a band mask.
    sliding_window: int | None = None
    norm: NormStyle = NormStyle.LLAMA
    activation: Activation = Activation.SILU
    qk_norm: bool = False
    sandwich_norms: bool = False
    embed_scale: float | None = None  # multiply embeddings by this (rounded to their dtype)
    attn_scale: float | None = None  # None: 1 / sqrt(head_dim)
    attn_softcap: float | None = None  # scores -> tanh(scores / c) * c before the softmax
    final_softcap: float | None = None  # logits likewise
    layer_windows: tuple[int | None, ...] | None = None  # per layer: its window (band mask), None = global
    local_rope_theta: float | None = None  # rope base of the windowed layers (unscaled); None: the global one
    rotary_dim: int | None = None  # channels rotated per head (partial rotary); None: head_dim
    fused_projections: bool = False  # the files hold qkv_proj and gate_up_proj
    moe: MoEConfig | None = None  # experts instead of the MLP (on its sparse layers)

    @property
    def rotary(self) -> int:
        return self.rotary_dim or self.head_dim

    def window_of(self, layer: int) -> int | None:
        return None if self.layer_windows is None else self.layer_windows[layer]

    def local_rope_of(self, layer: int) -> bool:
        return self.local_rope_theta is not None and self.window_of(layer) is not None

    @classmethod
    def from_hf_config(cls, hf: dict) -> ModelConfig:
        """The config of a HF config.json dict; a missing or mistyped value raises CheckpointError."""
        try:
            cfg = cls._from_hf(hf)
        except KeyError as e:
            raise CheckpointError(f"config.json: no {e.args[0]!r}; fix config.json or re-download the model") from None
        except (TypeError, ValueError, AttributeError, IndexError, ArithmeticError) as e:
            raise CheckpointError(
                f"config.json: a value has the wrong type ({str(e)[:120]}); fix config.json or re-download the model"
            ) from None
        ints = {"vocab_size": cfg.vocab, "hidden_size": cfg.hidden, "intermediate_size": cfg.intermediate,
                "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
                "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
                "max_position_embeddings": cfg.max_position_embeddings}
        for key, v in ints.items():
            if type(v) is not int or v < 1:
                raise CheckpointError(
                    f"config.json: {key} is {v!r}, not a positive integer; fix config.json or re-download the model"
                )
        return cfg

    @classmethod
    def _from_hf(cls, hf: dict) -> ModelConfig:
        spec = arch_spec(hf)
        act = hf.get(spec.activation_key, "silu")
        if act not in HF_ACTIVATIONS:
            raise UnsupportedModelError(f"{spec.architecture}: {spec.activation_key} {act!r} is not supported "
                                        f"({', '.join(HF_ACTIVATIONS)})")
        if hf.get("use_bidirectional_attention"):
            raise UnsupportedModelError(f"{spec.architecture}: use_bidirectional_attention (an encoder) is not "
                                        f"supported; turbopack runs causal language models")
        n_heads, n_layers = hf["num_attention_heads"], hf["num_hidden_layers"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // n_heads
        theta, scaling, local_theta = rope_from_hf(hf, spec.local_rope, spec.default_rope_theta, spec.phi3_rope)
        rotary_dim = _rotary_dim(hf, spec, head_dim)
        check_rotary(scaling, rotary_dim or head_dim)
        cap, windows = SLIDING_RULES[spec.sliding](hf, spec, n_layers)
        bias = spec.bias is BiasStyle.QKV or (spec.bias is BiasStyle.CONFIG and bool(hf.get("attention_bias")))
        softcap = (lambda key: _positive_or_none(hf.get(key))) if spec.softcapping else (lambda key: None)
        return cls(
            vocab=hf["vocab_size"],
            hidden=hf["hidden_size"],
            intermediate=hf["intermediate_size"],
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads") or n_heads,
            head_dim=head_dim,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bias,
            o_proj_bias=bias and spec.bias is BiasStyle.CONFIG,
            mlp_bias=spec.mlp_bias and bool(hf.get("mlp_bias", False)),
            sliding_window=cap,
            norm=spec.norm,
            activation=HF_ACTIVATIONS[act],
            qk_norm=spec.qk_norm,
            sandwich_norms=spec.sandwich_norms,
            embed_scale=math.sqrt(hf["hidden_size"]) if spec.scaled_embeddings else None,
            attn_scale=float(hf["query_pre_attn_scalar"]) ** -0.5 if spec.query_pre_attn_scalar else None,
            attn_softcap=softcap("attn_logit_softcapping"),
            final_softcap=softcap("final_logit_softcapping"),
            layer_windows=windows,
            local_rope_theta=local_theta if windows and any(windows) else None,
            rotary_dim=rotary_dim,
            fused_projections=spec.fused,
            moe=moe_from_hf(hf, spec.moe, n_layers) if spec.moe else None,
        )


def _positive_or_none(v) -> float | None:
    return float(v) if v else None


# --- which layers slide --------------------------------------------------------------------------


def _no_window(hf: dict, spec: ArchSpec, n_layers: int):
    return None, None


def _all_layers(hf: dict, spec: ArchSpec, n_layers: int):
    return hf.get("sliding_window") or None, None


def _if_used(hf: dict, spec: ArchSpec, n_layers: int):
    return (hf.get("sliding_window") or None) if hf.get("use_sliding_window") else None, None


def _qwen_layers(hf: dict, spec: ArchSpec, n_layers: int):
    # Qwen slides only on layers >= max_window_layers, and only when use_sliding_window is set.
    slides = hf.get("use_sliding_window") and hf.get("max_window_layers", 0) < n_layers
    return (hf.get("sliding_window") if slides else None), None


def _typed_layers(hf: dict, spec: ArchSpec, n_layers: int):
    window = hf.get("sliding_window")
    pattern = hf.get("sliding_window_pattern") or spec.sliding_pattern
    types = hf.get("layer_types") or [
        "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)
    ]
    if len(types) != n_layers or not set(types) <= {"sliding_attention", "full_attention"}:
        raise CheckpointError(f"config.json: layer_types must list sliding_attention/full_attention for each of "
                              f"the {n_layers} layers; fix config.json or re-download the model")
    if window is None:
        return None, None
    return None, tuple(int(window) if t == "sliding_attention" else None for t in types)


SLIDING_RULES: dict[Sliding, Callable] = {
    Sliding.NONE: _no_window,
    Sliding.ALL: _all_layers,
    Sliding.QWEN: _qwen_layers,
    Sliding.IF_USED: _if_used,
    Sliding.LAYER_TYPES: _typed_layers,
}


# --- rotary --------------------------------------------------------------------------------------


def _rotary_dim(hf: dict, spec: ArchSpec, head_dim: int) -> int | None:
    if not spec.partial_rotary:
        return None
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    factor = float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)))
    dim = int(head_dim * factor)
    if dim % 2 or not 0 < dim <= head_dim:
        raise CheckpointError(f"config.json: partial_rotary_factor {factor} gives {dim} rotary channels of "
                              f"head_dim {head_dim}, not an even number in (0, head_dim]; fix config.json")
    return None if dim == head_dim else dim
