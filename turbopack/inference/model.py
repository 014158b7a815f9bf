"""Reference decoder (Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3) in plain PyTorch.

This is the model the runtime is checked against, so it favours being obviously right over being
fast. Read it top to bottom: rotary tables -> modules -> Transformer -> the seam where quantized
kernels plug in (`replace_linears`) -> building. The config (turbopack.inference.config) turns each
family's differences into switches; this file reads only the switches (docs/families.md).

Two promises the rest of turbopack relies on:
  * parameter names are Hugging Face's, so a HF state dict loads with no renaming;
  * every projection is an `nn.Linear`, so `replace_linears` can swap in a quantized module without
    this file knowing about it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from turbopack.errors import UnsupportedModelError
from turbopack.inference import rope
from turbopack.inference.config import ARCHS, ModelConfig
from turbopack.inference.moe import MoE
from turbopack.inference.norms import ACTIVATIONS, RMSNorm, make_norm  # noqa: F401 (RMSNorm: callers import it here)
from turbopack.inference.rope import RopeScaling  # noqa: F401 (callers import it here)

# Rotary tables start this long (or max_position_embeddings if shorter) and grow on demand, so a
# 128k-context config does not allocate 128k rows just to be loaded.
ROPE_TABLE_LEN = 4096
SUPPORTED_ARCHITECTURES = tuple(ARCHS)


# --- rotary position embedding -------------------------------------------------------------------
# The formulas are transformers' modeling_rope_utils op for op (turbopack.inference.rope), so fp32
# results agree bitwise.


def _rope_args(cfg: ModelConfig, local: bool) -> tuple[int, float, rope.RopeScaling | None]:
    # the windowed layers' own base is unscaled (Gemma 3)
    return (cfg.rotary, cfg.local_rope_theta, None) if local else (cfg.rotary, cfg.rope_theta, cfg.rope_scaling)


def rope_tables(cfg: ModelConfig, seq_len: int, device=None, local: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos/sin [seq_len, rotary] of one pass over positions 0..seq_len-1 (``local``: the
    windowed layers' tables, Gemma 3)."""
    return rope.rope_tables(*_rope_args(cfg, local), seq_len, cfg.max_position_embeddings, device)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    # HF checkpoints pair channel i with i + head_dim/2, not 2i with 2i+1 as Meta's original code
    # (HF's conversion permuted the q/k rows to suit this); use the layout the weights expect.
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    # partial rotary (Phi-3's partial_rotary_factor): the first `rot` channels turn, the rest pass
    xr = x[..., :rot]
    return torch.cat((xr * cos + rotate_half(xr) * sin, x[..., rot:]), dim=-1)


# --- modules -------------------------------------------------------------------------------------


class KVCache(nn.Module):
    """Static per-layer K/V buffers [batch, n_kv_heads, max_seq_len, head_dim].

    Fixed shapes (no torch.cat growth) keep decode steps identical in shape, which is what lets the
    GPU runtime capture them in a CUDA graph.
    """

    # the layer's attention scale, logit soft-cap (Gemma) and sliding window (None: all slots),
    # set by Transformer.setup_caches: the decode kernels read them here (the torch path gets the
    # window as a band in its mask)
    scale: float | None = None
    softcap: float | None = None
    window: int | None = None

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
        return sdpa_gqa(q, self.k[:b], self.v[:b], mask, self.scale, self.softcap)


def sdpa_gqa(q, k, v, mask: torch.Tensor | None, scale: float | None = None,
             softcap: float | None = None) -> torch.Tensor:
    """Attention with grouped K/V heads; mask None means causal over q's own positions (a bool
    mask: True where a query may look). ``softcap``: scores -> tanh(scores / c) * c (Gemma 2)."""
    # GQA: query head h reads kv head h // group, the order of HF's repeat_kv.
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale)
    # SDPA has no soft-cap: HF's eager attention, op for op (softmax in fp32, rounded back).
    scores = (q @ k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    scores = torch.tanh(scores / softcap) * softcap
    if mask is None:
        t, s = q.shape[2], k.shape[2]
        mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v


def band(mask: torch.Tensor | None, input_pos: torch.Tensor | None, t: int, window: int, device):
    """``mask`` narrowed to the last ``window`` positions (HF: kv > q - window); None stays causal
    while the whole sequence fits in the window."""
    if mask is None:
        if t <= window:
            return None
        i = torch.arange(t, device=device)
        return (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
    slots = torch.arange(mask.shape[-1], device=device)
    return mask & (slots[None, :] > input_pos[:, None] - window)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        self.splits = (q_dim, kv_dim, kv_dim)
        # Optional fused projection: one matmul for q, k and v. Phi-3's files hold it (then it is
        # the only one); for the others fuse_projections installs it, the runtime's decode path.
        self.qkv_proj: nn.Module | None = None
        if cfg.fused_projections:
            self.qkv_proj = nn.Linear(cfg.hidden, q_dim + 2 * kv_dim, bias=cfg.attention_bias)
        else:
            self.q_proj = nn.Linear(cfg.hidden, q_dim, bias=cfg.attention_bias)
            self.k_proj = nn.Linear(cfg.hidden, kv_dim, bias=cfg.attention_bias)
            self.v_proj = nn.Linear(cfg.hidden, kv_dim, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(q_dim, cfg.hidden, bias=cfg.o_proj_bias)
        self.q_norm = make_norm(cfg, cfg.head_dim) if cfg.qk_norm else None
        self.k_norm = make_norm(cfg, cfg.head_dim) if cfg.qk_norm else None
        self.scale, self.softcap = cfg.attn_scale, cfg.attn_softcap
        self.window, self.local_rope = cfg.window_of(layer), cfg.local_rope_of(layer)

    def project(self, x):
        if self.qkv_proj is None:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return self.qkv_proj(x).split(self.splits, dim=-1)

    def forward(self, x, cos, sin, cache: KVCache | None = None, input_pos=None, mask=None):
        """Without a cache: causal attention over x. With one: append x's k/v at input_pos, then
        attend over the whole cache, `mask` [T, max_seq_len] hiding future and unwritten slots."""
        b, t, _ = x.shape
        q, k, v = (p.view(b, t, -1, self.head_dim) for p in self.project(x))
        if self.q_norm is not None:  # per head, before rotary (Qwen3, Gemma 3)
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.window is not None:
            mask = band(mask, input_pos, t, self.window, x.device)
        if cache is None:
            y = sdpa_gqa(q, k, v, mask, self.scale, self.softcap)
        else:
            y = cache.attend(q, k, v, input_pos, mask)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up_proj: nn.Module | None = None  # fused gate|up: Phi-3's files, or fuse_projections
        if cfg.fused_projections:
            self.gate_up_proj = nn.Linear(cfg.hidden, 2 * cfg.intermediate, bias=cfg.mlp_bias)
        else:
            self.gate_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=cfg.mlp_bias)
            self.up_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate, cfg.hidden, bias=cfg.mlp_bias)
        self.act = ACTIVATIONS[cfg.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is None:
            gate, up = self.gate_proj(x), self.up_proj(x)
        else:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act(gate) * up)  # SwiGLU (GeGLU for Gemma)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.input_layernorm = make_norm(cfg, cfg.hidden)
        self.self_attn = Attention(cfg, layer)
        # Gemma's "sandwich": post_attention_layernorm normalises the attention *output*, and the
        # MLP gets its own pre/post norms; elsewhere post_attention_layernorm is the MLP's input norm.
        self.post_attention_layernorm = make_norm(cfg, cfg.hidden)
        self.sandwich = cfg.sandwich_norms
        if self.sandwich:
            self.pre_feedforward_layernorm = make_norm(cfg, cfg.hidden)
            self.post_feedforward_layernorm = make_norm(cfg, cfg.hidden)
        # the feed-forward under its HF name: mlp, or the experts (Mixtral: block_sparse_moe)
        sparse = cfg.moe is not None and cfg.moe.sparse_layers[layer]
        self.ffn_name = cfg.moe.module if sparse else "mlp"
        setattr(self, self.ffn_name, MoE(cfg) if sparse else MLP(cfg))

    @property
    def ffn(self) -> nn.Module:
        return getattr(self, self.ffn_name)

    def forward(self, x, cos, sin, cache=None, input_pos=None, mask=None):
        h = self.self_attn(self.input_layernorm(x), cos, sin, cache, input_pos, mask)
        if not self.sandwich:
            x = x + h
            return x + self.ffn(self.post_attention_layernorm(x))
        x = x + self.post_attention_layernorm(h)
        return x + self.post_feedforward_layernorm(self.ffn(self.pre_feedforward_layernorm(x)))

    @property
    def mlp_norm(self) -> str:
        """The norm whose output the MLP reads (calibration folds scales into it)."""
        return "pre_feedforward_layernorm" if self.sandwich else "post_attention_layernorm"


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
            layers=nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers)),
            norm=make_norm(cfg, cfg.hidden),
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
        """(Re)build the cos/sin tables for positions < seq_len on the embedding's device (and the
        windowed layers' own tables when they have their own base, Gemma 3): row p as a decode step
        at p turns (rope.position_tables; see ``pass_rope`` for passes of several tokens).

        Non-persistent buffers: they are derived from the config, so they stay out of the state dict
        and must be rebuilt after loading onto the meta device (turbopack.inference.loader does that).
        """
        device = self.model.embed_tokens.weight.device
        # on meta: built on the CPU and moved (rope maths on a meta tensor imports torch._dynamo, as above)
        at = torch.device("cpu") if device.type == "meta" else device
        with torch.device(at):
            cfg = self.config
            cos, sin = (t.to(device) for t in rope.position_tables(*_rope_args(cfg, False), seq_len,
                                                                    cfg.max_position_embeddings, at))
            if cfg.local_rope_theta is not None:
                cos_l, sin_l = (t.to(device) for t in rope_tables(self.config, seq_len, at, local=True))
            else:
                cos_l, sin_l = cos, sin
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("rope_cos_local", cos_l, persistent=False)
        self.register_buffer("rope_sin_local", sin_l, persistent=False)

    def pass_rope(self, t: int, input_pos: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The global cos/sin tables (rows by position) a pass of ``t`` tokens at ``input_pos``
        (None: 0..t-1) reads: the stored ones, except under LongRoPE for a pass of several tokens
        reaching past the training length, which transformers turns wholly with the long factors."""
        end = rope.pass_end(self.config.rope_scaling)
        if end is None or t == 1:
            return self.rope_cos, self.rope_sin
        last = t if input_pos is None else int(input_pos.max()) + 1  # a host sync, in a prefill only
        if last <= end:
            return self.rope_cos, self.rope_sin
        return rope_tables(self.config, last, self.rope_cos.device)

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
        for i, cache in enumerate(self.kv_caches):
            cache.scale, cache.softcap, cache.window = cfg.attn_scale, cfg.attn_softcap, cfg.window_of(i)
        if self.rope_cos.shape[0] < max_seq_len:
            self.setup_rope(max_seq_len)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.model.embed_tokens(input_ids)
        if self.config.embed_scale is not None:  # Gemma: the scale rounded to the embedding's dtype, as HF;
            # rounded on the host, so a CUDA graph's capture holds no host-to-device copy
            x = x * torch.tensor(self.config.embed_scale, dtype=x.dtype).item()
        return x

    def forward(self, input_ids: torch.Tensor, input_pos: torch.Tensor | None = None):
        """input_ids [B, T] -> fp32 logits [B, T, vocab].

        input_pos None: one causal pass over positions 0..T-1; any KV cache is left untouched.
        input_pos [T]: the tokens sit at these positions; their k/v go into the caches (setup_caches
        first), so a prefill of positions 0..P-1 followed by one-token decodes at P, P+1, ... works.
        """
        t = input_ids.shape[1]
        x = self.embed(input_ids)
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
        ropes = {local: (cos[positions].to(x.dtype), sin[positions].to(x.dtype)) for local, (cos, sin) in
                 ((False, self.pass_rope(t, input_pos)), (True, (self.rope_cos_local, self.rope_sin_local)))}
        for layer, cache in zip(self.model.layers, caches):
            x = layer(x, *ropes[layer.self_attn.local_rope], cache, input_pos, mask)
        return self.logits(self.model.norm(x))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """fp32 logits of the final norm's output h (Gemma 2's soft-cap in the logits' dtype, as HF)."""
        logits = self.lm_head(h)
        if self.config.final_softcap is not None:
            logits = torch.tanh(logits / self.config.final_softcap) * self.config.final_softcap
        return logits.float()


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
