"""Reference Llama-family decoder (Llama, Mistral, Qwen2) in plain PyTorch.

This is the model the runtime is checked against, so it favours being obviously right over being
fast. Read it top to bottom: config -> rotary tables -> modules -> Transformer -> the seam where
quantized kernels plug in (`replace_linears`) -> loading a Hugging Face folder.

Two promises the rest of turbopack relies on:
  * parameter names are Hugging Face's, so a HF state dict loads with no renaming;
  * every projection is an `nn.Linear`, so `replace_linears` can swap in a quantized module without
    this file knowing about it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from turbopack.errors import CheckpointError, UnsupportedModelError
from turbopack.hfconfig import architectures_of

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3")
# Rotary tables start this long (or max_position_embeddings if shorter) and grow on demand, so a
# 128k-context config does not allocate 128k rows just to be loaded.
ROPE_TABLE_LEN = 4096


@dataclass(frozen=True)
class RopeScaling:
    type: str  # "linear" | "dynamic" | "llama3"
    factor: float
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position_embeddings: int = 8192  # llama3 only


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
    # so we only record the window and refuse longer sequences instead of building a band mask.
    sliding_window: int | None = None

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
        arch = (architectures_of(hf) or [None])[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            supported = ", ".join(SUPPORTED_ARCHITECTURES)
            raise UnsupportedModelError(f"architecture {arch!r} is not supported ({supported})")
        if hf.get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"{arch}: hidden_act {hf['hidden_act']!r} is not 'silu'")
        n_heads = hf["num_attention_heads"]
        is_qwen2 = arch == "Qwen2ForCausalLM"
        llama_bias = bool(hf.get("attention_bias", False)) and arch == "LlamaForCausalLM"
        # Qwen2 slides only on layers >= max_window_layers, and only when use_sliding_window is set.
        n_layers = hf["num_hidden_layers"]
        qwen2_slides = hf.get("use_sliding_window") and hf.get("max_window_layers", 0) < n_layers
        slides = arch == "MistralForCausalLM" or (is_qwen2 and qwen2_slides)
        theta, scaling = _rope_from_hf(hf)
        return cls(
            vocab=hf["vocab_size"],
            hidden=hf["hidden_size"],
            intermediate=hf["intermediate_size"],
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads") or n_heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=is_qwen2 or llama_bias,
            o_proj_bias=llama_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)) and arch == "LlamaForCausalLM",
            sliding_window=hf.get("sliding_window") if slides else None,
        )


def _rope_from_hf(hf: dict) -> tuple[float, RopeScaling | None]:
    # transformers 5 writes `rope_parameters` with rope_theta inside; 4.x wrote `rope_scaling`
    # (maybe null) beside a top-level `rope_theta`; older files say "type" for "rope_type".
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in SUPPORTED_ROPE_TYPES:
        supported = ", ".join(SUPPORTED_ROPE_TYPES)
        raise UnsupportedModelError(f"rope type {kind!r} is not supported ({supported})")
    if kind == "default":
        return theta, None
    default_len = hf.get("max_position_embeddings", 2048)  # HF's fallback for llama3's old length
    return theta, RopeScaling(
        kind,
        float(params["factor"]),
        float(params.get("low_freq_factor", 1.0)),
        float(params.get("high_freq_factor", 4.0)),
        int(params.get("original_max_position_embeddings", default_len)),
    )


# --- rotary position embedding -------------------------------------------------------------------
# The formulas are transformers' modeling_rope_utils op for op, so fp32 results agree bitwise.


def rope_inv_freq(cfg: ModelConfig, seq_len: int) -> torch.Tensor:
    """Rotation speed of each of the head_dim/2 channel pairs, with the config's scaling applied."""
    dim, base, s = cfg.head_dim, cfg.rope_theta, cfg.rope_scaling
    if s is not None and s.type == "dynamic":
        # NTK: raise the base once the sequence outgrows training length; below it nothing changes.
        # HF rescales on every call for that call's length; a table of seq_len rows is scaled for
        # seq_len, so beyond max_position_embeddings we match HF only for a pass of exactly seq_len.
        seq_len = max(seq_len, cfg.max_position_embeddings)
        stretch = s.factor * seq_len / cfg.max_position_embeddings - (s.factor - 1)
        base = base * stretch ** (dim / (dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if s is None or s.type == "dynamic":
        return inv_freq
    if s.type == "linear":
        return inv_freq / s.factor  # same as dividing positions by factor
    # llama3: keep fast (short-wavelength) pairs, slow the slow ones by `factor`, blend in between.
    old_len = s.original_max_position_embeddings
    low_freq_wavelen, high_freq_wavelen = old_len / s.low_freq_factor, old_len / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * inv_freq_llama / s.factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)


def rope_tables(cfg: ModelConfig, seq_len: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos/sin of shape [seq_len, head_dim] for positions 0..seq_len-1."""
    inv_freq = rope_inv_freq(cfg, seq_len).to(device)
    freqs = torch.arange(seq_len, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    # HF checkpoints pair channel i with i + head_dim/2, not 2i with 2i+1 as Meta's original code
    # (HF's conversion permuted the q/k rows to suit this); use the layout the weights expect.
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


# --- modules -------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 and round back before the weight multiply, as HF does, so bf16 agrees.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class KVCache(nn.Module):
    """Static per-layer K/V buffers [batch, n_kv_heads, max_seq_len, head_dim].

    Fixed shapes (no torch.cat growth) keep decode steps identical in shape, which is what lets the
    GPU runtime capture them in a CUDA graph.
    """

    def __init__(self, max_batch, n_kv_heads, max_seq_len, head_dim, dtype, device=None):
        super().__init__()
        shape = (max_batch, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def max_seq_len(self) -> int:
        return self.k.shape[2]

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k/v [B, n_kv, T, D] at positions input_pos [T]; return the cache for batch B."""
        b = k.shape[0]
        self.k[:b, :, input_pos] = k
        self.v[:b, :, input_pos] = v
        return self.k[:b], self.v[:b]

    def attend(self, q, k, v, input_pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Write k/v at input_pos, then attention of q [B, H, T, D] over the cache -> [B, H, T, D].

        The one place attention meets the cache, so a cache that stores K/V differently (quantized,
        turbopack.inference.kv_quant) brings its own attention without this file knowing about it."""
        self.update(input_pos, k, v)
        return self.attention(q, input_pos, mask)

    def attention(self, q, input_pos: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention of q over what the cache holds (q's own K/V already written)."""
        b = q.shape[0]
        return sdpa_gqa(q, self.k[:b], self.v[:b], mask)


def sdpa_gqa(q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention with grouped K/V heads; mask None means causal over q's own positions."""
    # GQA: query head h reads kv head h // group, the order of HF's repeat_kv.
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden, q_dim, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.hidden, kv_dim, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.hidden, kv_dim, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(q_dim, cfg.hidden, bias=cfg.o_proj_bias)
        self.splits = (q_dim, kv_dim, kv_dim)
        # Optional fused projection (fuse_projections): one matmul for q, k and v, the runtime's
        # decode path. None keeps the three HF modules, and the state dict has no new names.
        self.qkv_proj: nn.Module | None = None

    def project(self, x):
        if self.qkv_proj is None:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return self.qkv_proj(x).split(self.splits, dim=-1)

    def forward(self, x, cos, sin, cache: KVCache | None = None, input_pos=None, mask=None):
        """Without a cache: causal attention over x. With one: append x's k/v at input_pos, then
        attend over the whole cache, `mask` [T, max_seq_len] hiding future and unwritten slots."""
        b, t, _ = x.shape
        q, k, v = self.project(x)
        q = q.view(b, t, -1, self.head_dim).transpose(1, 2)
        k = k.view(b, t, -1, self.head_dim).transpose(1, 2)
        v = v.view(b, t, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = sdpa_gqa(q, k, v, None) if cache is None else cache.attend(q, k, v, input_pos, mask)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate, cfg.hidden, bias=cfg.mlp_bias)
        self.gate_up_proj: nn.Module | None = None  # optional fused gate|up (fuse_projections)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is None:
            gate, up = self.gate_proj(x), self.up_proj(x)
        else:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)  # SwiGLU


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache=None, input_pos=None, mask=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, input_pos, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        # No random init on meta (the loader's build; it assigns the weights): normal_ on a meta tensor
        # runs torch._refs, whose first call imports torch._dynamo, ~1.4 s of every `turbopack run`.
        weight = torch.empty(cfg.vocab, cfg.hidden) if torch.get_default_device().type == "meta" else None
        # A ModuleDict named `model` reproduces HF's "model.*" parameter prefix without a class.
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(cfg.vocab, cfg.hidden, _weight=weight),
            layers=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers)),
            norm=RMSNorm(cfg.hidden, cfg.rms_norm_eps),
        ))  # fmt: skip
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.kv_caches: nn.ModuleList | None = None
        self.setup_rope(min(cfg.max_position_embeddings, ROPE_TABLE_LEN))

    def get_input_embeddings(self) -> nn.Embedding:  # HF's name: the loader ties lm_head the same way for both
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def setup_rope(self, seq_len: int) -> None:
        """(Re)build the cos/sin tables for positions < seq_len on the embedding's device.

        Non-persistent buffers: they are derived from the config, so they stay out of the state dict
        and must be rebuilt after loading onto the meta device (turbopack.inference.loader does that).
        """
        device = self.model.embed_tokens.weight.device
        cos, sin = (rope_tables(self.config, seq_len, device) if device.type != "meta"  # (on meta: as above)
                    else (torch.empty(seq_len, self.config.head_dim, device=device),) * 2)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def setup_caches(self, max_batch_size: int, max_seq_len: int, dtype=None, cache_cls=None) -> None:
        """Allocate one static KVCache per layer, enabling `forward(ids, input_pos)`.

        cache_cls (default KVCache) is called like KVCache(batch, n_kv, seq, head_dim, dtype, device)
        and must offer `attend`; quantized caches (turbopack.inference.kv_quant) plug in here."""
        window = self.config.sliding_window
        if window is not None and max_seq_len > window:
            raise UnsupportedModelError(f"max_seq_len {max_seq_len} > sliding_window {window}")
        cfg, weight = self.config, self.model.embed_tokens.weight
        shape = (max_batch_size, cfg.n_kv_heads, max_seq_len, cfg.head_dim)
        self.kv_caches = nn.ModuleList(
            (cache_cls or KVCache)(*shape, dtype or weight.dtype, weight.device) for _ in range(cfg.n_layers)
        )
        if self.rope_cos.shape[0] < max_seq_len:
            self.setup_rope(max_seq_len)

    def forward(self, input_ids: torch.Tensor, input_pos: torch.Tensor | None = None):
        """input_ids [B, T] -> fp32 logits [B, T, vocab].

        input_pos None: one causal pass over positions 0..T-1; any KV cache is left untouched.
        input_pos [T]: the tokens sit at these positions; their k/v go into the caches (setup_caches
        first), so a prefill of positions 0..P-1 followed by one-token decodes at P, P+1, ... works.
        """
        t = input_ids.shape[1]
        x = self.model.embed_tokens(input_ids)
        caches, mask = [None] * self.config.n_layers, None
        if input_pos is None:
            window = self.config.sliding_window
            if window is not None and t > window:
                raise UnsupportedModelError(f"sequence length {t} exceeds sliding_window {window}")
            if self.rope_cos.shape[0] < t:
                self.setup_rope(t)
            positions = torch.arange(t, device=x.device)
        else:
            if self.kv_caches is None:
                raise RuntimeError("forward(ids, input_pos) needs setup_caches() first")
            caches, positions = list(self.kv_caches), input_pos
            slots = torch.arange(self.kv_caches[0].max_seq_len, device=x.device)
            mask = slots[None, :] <= input_pos[:, None]  # a query at position p sees slots 0..p
        # Tables are fp32 and rounded to the activation dtype here, matching HF's cos.to(x.dtype).
        cos, sin = self.rope_cos[positions].to(x.dtype), self.rope_sin[positions].to(x.dtype)
        for layer, cache in zip(self.model.layers, caches):
            x = layer(x, cos, sin, cache, input_pos, mask)
        return self.lm_head(self.model.norm(x)).float()


# --- the seam for quantized kernels --------------------------------------------------------------


LinearFactory = Callable[[str, nn.Linear], nn.Module | None]


def replace_linears(model: nn.Module, factory: LinearFactory) -> list[str]:
    """Call factory(name, linear) for every nn.Linear; install what it returns (None keeps the
    original). Names are module paths like "model.layers.0.self_attn.q_proj" or "lm_head".
    Returns the names replaced. A replaced tied lm_head stops sharing the embedding, as intended."""
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    replaced = []
    for name, linear in targets:  # collected first: mutating while named_modules() walks is unsafe
        new = factory(name, linear)
        if new is None:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
        replaced.append(name)
    return replaced


# --- building and loading ------------------------------------------------------------------------


def build_model(config: ModelConfig, device="meta", dtype=torch.float32) -> Transformer:
    """On "meta" nothing is allocated: weights are expected to be assigned by load_state_dict."""
    with torch.device(device):
        model = Transformer(config)
    return model.to(dtype=dtype).eval()
