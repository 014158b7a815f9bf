"""Rotary position embedding: each Hugging Face ``rope_type``, read from config.json and computed
as transformers' modeling_rope_utils computes it, op for op, so fp32 tables agree bitwise.

A type's inverse frequencies (one per pair of rotary channels) may depend on the length of the
pass: ``dynamic`` (NTK) raises the base past the training length, and ``longrope`` (Phi-3 128k,
Phi-3.5, Phi-4-mini) switches from its short to its long factors once the pass reaches past
``original_max_position_embeddings``. transformers decides per forward pass, from the pass's
last position; :func:`rope_tables` gives one pass's tables, :func:`position_tables` the tables a
KV cache is written and read with, row p as a pass ending at position p (a decode step) sees it.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from functools import partial

import torch

from turbopack.errors import CheckpointError, UnsupportedModelError


class RopeType(str, enum.Enum):
    """transformers' ``rope_type`` values (the strings in config.json)."""

    DEFAULT = "default"
    LINEAR = "linear"
    DYNAMIC = "dynamic"
    LLAMA3 = "llama3"
    YARN = "yarn"
    LONGROPE = "longrope"


#: older names: Phi-3's first 128k configs said "su" for LongRoPE (and Phi-3's "yarn" is one too)
_ALIASES = {"su": RopeType.LONGROPE}


@dataclass(frozen=True)
class RopeScaling:
    """A scaled rotary embedding; fields a type does not use keep their defaults."""

    type: RopeType
    factor: float
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    original_max_position_embeddings: int = 8192  # llama3, yarn, longrope: the training length
    attention_factor: float = 1.0  # yarn, longrope: cos and sin are multiplied by it
    beta_fast: float = 32.0  # yarn: the ramp between extrapolated and interpolated channel pairs
    beta_slow: float = 1.0
    truncate: bool = True  # yarn: the ramp's ends rounded outward to whole channel pairs
    short_factor: tuple[float, ...] = ()  # longrope: per-pair divisors within the training length
    long_factor: tuple[float, ...] = ()  # longrope: and beyond it


def rope_from_hf(hf: dict, local_rope: bool, default_theta: float, phi3: bool
                 ) -> tuple[float, RopeScaling | None, float | None]:
    """(global rope base, its scaling, the windowed layers' base or None) of config.json ``hf``.
    ``local_rope``: sliding layers have a base of their own (Gemma 3); ``phi3``: Phi-3's reading
    ("yarn" means LongRoPE, a top-level original_max_position_embeddings, 4096 when absent)."""
    # transformers 5 writes `rope_parameters` with rope_theta inside (Gemma 3: one dict per layer
    # type); 4.x wrote `rope_scaling` (maybe null) beside a top-level `rope_theta` (Gemma 3:
    # `rope_local_base_freq` for the sliding layers); older files say "type" for "rope_type".
    key = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    params = hf.get(key) or {}
    local = None
    if local_rope:
        if "full_attention" in params:
            local = float((params.get("sliding_attention") or {}).get("rope_theta", 10000.0))
            params = params["full_attention"] or {}
        else:
            local = float(hf.get("rope_local_base_freq", 10000.0))
    theta = float(params.get("rope_theta", hf.get("rope_theta", default_theta)))
    name = params.get("rope_type", params.get("type", "default"))
    name = "longrope" if phi3 and name == "yarn" else _ALIASES.get(name, name)
    if name not in {t.value for t in RopeType}:
        raise UnsupportedModelError(f"config.json: {key}.rope_type {name!r} is not supported; supported: "
                                    f"{', '.join(t.value for t in RopeType)}")
    kind = RopeType(name)
    if kind is RopeType.DEFAULT:
        return theta, None, local
    return theta, _SCALINGS[kind](params, hf, phi3), local


def _original_len(params: dict, hf: dict, phi3: bool) -> int:
    # as transformers' standardize_rope_params: a top-level value wins (Phi-3 keeps it there, and
    # Phi3Config's default is 4096), else the rope dict's, else max_position_embeddings
    if "original_max_position_embeddings" in hf or phi3:
        return int(hf.get("original_max_position_embeddings", 4096))
    return int(params.get("original_max_position_embeddings", hf.get("max_position_embeddings", 2048)))


def _lengths(params: dict, hf: dict, phi3: bool) -> tuple[int, float]:
    """(training length, factor): YaRN's and LongRoPE's factor defaults to the length ratio."""
    old = _original_len(params, hf, phi3)
    return old, float(params.get("factor") or hf.get("max_position_embeddings", old) / old)


def _plain(kind: RopeType, params: dict, hf: dict, phi3: bool) -> RopeScaling:
    return RopeScaling(kind, float(params["factor"]), original_max_position_embeddings=_original_len(params, hf, phi3))


def _llama3(params: dict, hf: dict, phi3: bool) -> RopeScaling:
    return RopeScaling(RopeType.LLAMA3, float(params["factor"]), float(params.get("low_freq_factor", 1.0)),
                       float(params.get("high_freq_factor", 4.0)), _original_len(params, hf, phi3))


def _mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn(params: dict, hf: dict, phi3: bool) -> RopeScaling:
    old, factor = _lengths(params, hf, phi3)
    attention = params.get("attention_factor")
    if attention is None:  # DeepSeek's mscale / mscale_all_dim, else the paper's 0.1 ln(s) + 1
        m, m_all = params.get("mscale"), params.get("mscale_all_dim")
        attention = _mscale(factor, m) / _mscale(factor, m_all) if m and m_all else _mscale(factor)
    return RopeScaling(RopeType.YARN, factor, original_max_position_embeddings=old, attention_factor=float(attention),
                       beta_fast=float(params.get("beta_fast") or 32), beta_slow=float(params.get("beta_slow") or 1),
                       truncate=bool(params.get("truncate", True)))


def _longrope(params: dict, hf: dict, phi3: bool) -> RopeScaling:
    old, factor = _lengths(params, hf, phi3)
    attention = params.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(old))
    short, long = (tuple(float(f) for f in params[k]) for k in ("short_factor", "long_factor"))
    return RopeScaling(RopeType.LONGROPE, factor, original_max_position_embeddings=old,
                       attention_factor=float(attention), short_factor=short, long_factor=long)


_SCALINGS = {RopeType.LINEAR: partial(_plain, RopeType.LINEAR), RopeType.DYNAMIC: partial(_plain, RopeType.DYNAMIC),
             RopeType.LLAMA3: _llama3, RopeType.YARN: _yarn, RopeType.LONGROPE: _longrope}


def check_rotary(s: RopeScaling | None, rotary: int) -> None:
    """LongRoPE's factors must cover the rotary channel pairs."""
    if s is not None and s.type is RopeType.LONGROPE:
        for name, f in (("short_factor", s.short_factor), ("long_factor", s.long_factor)):
            if len(f) != rotary // 2:
                raise CheckpointError(f"config.json: rope {name} has {len(f)} values, but the {rotary} rotary "
                                      f"channels need {rotary // 2}; fix config.json or re-download the model")


# --- inverse frequencies -------------------------------------------------------------------------


def _pairs(dim: int, base: float) -> torch.Tensor:
    """base ** (2i / dim) for each channel pair i."""
    return base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)


def inv_freq(dim: int, base: float, s: RopeScaling | None, seq_len: int, max_len: int) -> torch.Tensor:
    """Rotation speed of each of the dim/2 channel pairs in a pass of ``seq_len`` positions
    (``max_len``: max_position_embeddings, which dynamic NTK scales past)."""
    if s is not None and s.type is RopeType.DYNAMIC:
        # NTK: raise the base once the sequence outgrows training length; below it nothing changes.
        # transformers rescales on every call for that call's length; a table of seq_len rows is
        # scaled for seq_len, so past max_position_embeddings it matches a pass of exactly seq_len.
        seq_len = max(seq_len, max_len)
        base = base * (s.factor * seq_len / max_len - (s.factor - 1)) ** (dim / (dim - 2))
    if s is not None and s.type is RopeType.LONGROPE:
        ext = s.long_factor if seq_len > s.original_max_position_embeddings else s.short_factor
        return 1.0 / (torch.tensor(ext, dtype=torch.float32) * _pairs(dim, base))
    if s is not None and s.type is RopeType.YARN:
        return _yarn_inv_freq(dim, base, s)
    freq = 1.0 / _pairs(dim, base)
    if s is None or s.type is RopeType.DYNAMIC:
        return freq
    if s.type is RopeType.LINEAR:
        return freq / s.factor  # same as dividing positions by factor
    return _llama3_inv_freq(freq, s)


def _llama3_inv_freq(inv: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    # keep fast (short-wavelength) pairs, slow the slow ones by `factor`, blend in between
    old_len = s.original_max_position_embeddings
    low_freq_wavelen, high_freq_wavelen = old_len / s.low_freq_factor, old_len / s.high_freq_factor
    wavelen = 2 * math.pi / inv
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv / s.factor, inv)
    smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * inv_freq_llama / s.factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)


def _yarn_inv_freq(dim: int, base: float, s: RopeScaling) -> torch.Tensor:
    # pairs that turn fewer than beta_slow times over the training length are interpolated (divided
    # by factor), those that turn more than beta_fast times kept, a linear ramp in between
    def pair_of(turns: float) -> float:
        return dim * math.log(s.original_max_position_embeddings / (turns * 2 * math.pi)) / (2 * math.log(base))

    low, high = pair_of(s.beta_fast), pair_of(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / ((high + 0.001 if low == high else high)
                                                                            - low), 0, 1)
    keep = 1 - ramp
    pos = _pairs(dim, base)
    return (1.0 / (s.factor * pos)) * (1 - keep) + (1.0 / pos) * keep


# --- tables --------------------------------------------------------------------------------------


def _tables(inv: torch.Tensor, rows: int, device, attention: float) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = torch.arange(rows, device=device, dtype=torch.float32)[:, None] * inv.to(device)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    if attention == 1.0:
        return emb.cos(), emb.sin()
    return emb.cos() * attention, emb.sin() * attention  # yarn, longrope: as transformers, in fp32


def rope_tables(dim: int, base: float, s: RopeScaling | None, seq_len: int, max_len: int, device=None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos/sin [seq_len, dim] of one pass over positions 0..seq_len-1, as transformers."""
    return _tables(inv_freq(dim, base, s, seq_len, max_len), seq_len, device, s.attention_factor if s else 1.0)


def position_tables(dim: int, base: float, s: RopeScaling | None, rows: int, max_len: int, device=None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables a KV cache is written with: row p as transformers rotates a decode step at p.
    They are :func:`rope_tables`' except under LongRoPE, whose rows from the training length on
    take the long factors (a step at p is a pass ending at p)."""
    cos, sin = rope_tables(dim, base, s, rows, max_len, device)
    if s is None or s.type is not RopeType.LONGROPE or rows <= s.original_max_position_embeddings:
        return cos, sin
    short = _tables(inv_freq(dim, base, s, 1, max_len), s.original_max_position_embeddings, device,
                    s.attention_factor)
    return torch.cat((short[0], cos[len(short[0]):])), torch.cat((short[1], sin[len(short[1]):]))


def pass_end(s: RopeScaling | None) -> int | None:
    """The length past which a pass of several tokens needs tables of its own (LongRoPE's
    training length: the whole pass turns with the long factors), None where none does."""
    return s.original_max_position_embeddings if s is not None and s.type is RopeType.LONGROPE else None
