"""Quantized KV cache: K/V stored as int8 or int4 codes with a per-(batch, head, token) scale.

Math (one head's vector x of head_dim D, one token; all float32):
  int8, symmetric:   s = max|x| / 127 (0 -> 1);  q = clamp(rne(x / s), -127, 127)  (int8)
                     x' = q * s                           |x - x'| <= s / 2 = max|x| / 254
  int4, asymmetric:  z = min(x);  s = (max(x) - z) / 15 (0 -> 1)
                     q = clamp(rne((x - z) / s), 0, 15)   (uint4; two per byte, even d low nibble)
                     x' = q * s + z                       |x - x'| <= s / 2 = (max - min) / 30
rne = round half to even. ``z`` is a float offset (the minimum), not an integer zero point, so
dequantization is one fused multiply-add. Scales and zeros are float32 [B, H_kv, S] beside the codes
[B, H_kv, S, D] (int8) or [B, H_kv, S, D/2] (uint8, int4).

Attention reads the codes directly: decode (one new token) runs the Triton kernel of
``turbopack.inference.kernels.attention``, which dequantizes K/V in registers; prefill and the CPU
path dequantize the cache to the query's dtype and use the reference attention (``sdpa_gqa``).
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

import torch
from torch import nn

from turbopack.errors import TurbopackError
from turbopack.inference.model import KVCache, sdpa_gqa
from turbopack.registry import Registry


class KVPrecision(str, enum.Enum):
    """KV cache precisions; the values are the CLI/API strings."""

    BF16 = "bf16"
    INT8 = "int8"
    INT4 = "int4"


@dataclass(frozen=True)
class KVFormat:
    precision: KVPrecision
    bits: int           # 16 for the unquantized cache
    sym: bool

    def code_shape(self, d: int) -> int:
        return d // 2 if self.bits == 4 else d


KV_FORMATS: Registry[KVFormat] = Registry("kv cache precision")
for _f in (KVFormat(KVPrecision.BF16, 16, True), KVFormat(KVPrecision.INT8, 8, True),
           KVFormat(KVPrecision.INT4, 4, False)):
    KV_FORMATS.register(_f.precision, _f)


def _rne(y: torch.Tensor) -> torch.Tensor:
    return torch.round(y)  # torch.round is round-half-to-even


def quantize_kv(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """x [..., D] -> (codes, scale [...], zero [...] or None) per the module docstring."""
    xf = x.float()
    if bits == 8:
        s = xf.abs().amax(-1) / 127
        s = torch.where(s == 0, torch.ones_like(s), s)
        q = torch.clamp(_rne(xf / s[..., None]), -127, 127).to(torch.int8)
        return q, s, None
    if bits != 4:
        raise ValueError(f"quantize_kv: bits must be 8 or 4, got {bits}")
    if x.shape[-1] % 2:
        raise TurbopackError(f"int4 KV cache needs an even head_dim, got {x.shape[-1]}; use --kv int8")
    z = xf.amin(-1)
    s = (xf.amax(-1) - z) / 15
    s = torch.where(s == 0, torch.ones_like(s), s)
    q = torch.clamp(_rne((xf - z[..., None]) / s[..., None]), 0, 15).to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4), s, z


def dequantize_kv(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize_kv` (up to rounding), in ``dtype``."""
    if bits == 8:
        return (codes.float() * scale[..., None]).to(dtype)
    q = torch.stack((codes & 0xF, codes >> 4), dim=-1).flatten(-2).float()
    return (q * scale[..., None] + zero[..., None]).to(dtype)


def _kernels_usable(x: torch.Tensor, head_dim: int) -> bool:
    from turbopack.inference.kernels import attention as A

    return A.available(x.device) and A.supports_head_dim(head_dim)


class QuantKVCache(nn.Module):
    """Static quantized K/V buffers; a drop-in for model.KVCache (selected by setup_caches).

    backend "torch": quantize and dequantize with the functions above (any device).
    backend "triton": a Triton kernel quantizes and stores new K/V, and decode attention reads the
    codes directly (GPU, or CPU under TRITON_INTERPRET=1).
    """

    scale: float | None = None  # as model.KVCache: set by Transformer.setup_caches (Gemma)
    softcap: float | None = None
    window: int | None = None

    def __init__(self, max_batch, n_kv_heads, max_seq_len, head_dim, dtype, device=None, *,
                 precision: str | KVPrecision = KVPrecision.INT8, backend: str = "torch"):
        super().__init__()
        self.fmt = KV_FORMATS.get(precision)
        if self.fmt.bits == 16:
            raise ValueError("QuantKVCache holds int8/int4; use KVCache for bf16")
        if self.fmt.bits == 4 and head_dim % 2:
            raise TurbopackError(f"int4 KV cache needs an even head_dim, got {head_dim}; use --kv int8")
        self.backend, self.head_dim = backend, head_dim
        code_dtype = torch.int8 if self.fmt.bits == 8 else torch.uint8
        shape = (max_batch, n_kv_heads, max_seq_len)
        codes = (*shape, self.fmt.code_shape(head_dim))
        for name in ("k", "v"):
            self.register_buffer(f"{name}_codes", torch.zeros(codes, dtype=code_dtype, device=device), persistent=False)
            self.register_buffer(
                f"{name}_scale", torch.ones(shape, dtype=torch.float32, device=device), persistent=False
            )
            zero = torch.zeros(shape if self.fmt.bits == 4 else (0,), dtype=torch.float32, device=device)
            self.register_buffer(f"{name}_zero", zero, persistent=False)

    @property
    def max_seq_len(self) -> int:
        return self.k_codes.shape[2]

    @property
    def bits(self) -> int:
        return self.fmt.bits

    def parts(self, which: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return getattr(self, f"{which}_codes"), getattr(self, f"{which}_scale"), getattr(self, f"{which}_zero")

    def _use_kernels(self, x: torch.Tensor) -> bool:
        return self.backend == "triton" and _kernels_usable(x, self.head_dim)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Quantize k/v [B, n_kv, T, D] and store them at positions input_pos [T]."""
        if self._use_kernels(k):
            from turbopack.inference.kernels.kv_store import store_kv

            store_kv(k, input_pos, *self.parts("k"), self.bits)
            store_kv(v, input_pos, *self.parts("v"), self.bits)
            return
        b = k.shape[0]
        for name, x in (("k", k), ("v", v)):
            codes, scale, zero = self.parts(name)
            q, s, z = quantize_kv(x, self.bits)
            codes[:b, :, input_pos] = q
            scale[:b, :, input_pos] = s
            if z is not None:
                zero[:b, :, input_pos] = z

    def dequantized(self, b: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole cache for batch b as dtype tensors [b, n_kv, S, D] (reference attention)."""
        out = []
        for name in ("k", "v"):
            codes, scale, zero = self.parts(name)
            out.append(dequantize_kv(codes[:b], scale[:b], zero[:b] if self.bits == 4 else None, self.bits, dtype))
        return out[0], out[1]

    def attend(self, q, k, v, input_pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.update(input_pos, k, v)
        return self.attention(q, input_pos, mask)

    def attention(self, q, input_pos: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention of q [B, H, T, D] over what the cache holds (K/V of q's tokens already stored)."""
        b, t = q.shape[0], q.shape[2]
        if t == 1 and self._use_kernels(q):
            from turbopack.inference.kernels.attention import decode_attention

            return decode_attention(q, self, input_pos)
        kd, vd = self.dequantized(b, q.dtype)
        return sdpa_gqa(q, kd, vd, mask, self.scale, self.softcap)


class KernelKVCache(KVCache):
    """The bf16 cache with the Triton decode kernel (same kernel as the quantized caches, 16-bit
    K/V), so an int8-vs-bf16 KV comparison measures the storage, not two different attentions."""

    bits = 16

    def parts(self, which: str) -> tuple[torch.Tensor, None, None]:
        return getattr(self, which), None, None

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        if not _kernels_usable(k, k.shape[-1]):
            return super().update(input_pos, k, v)
        from turbopack.inference.kernels.kv_store import store_kv

        store_kv(k, input_pos, self.k, None, None, 16)
        store_kv(v, input_pos, self.v, None, None, 16)
        b = k.shape[0]
        return self.k[:b], self.v[:b]

    def attend(self, q, k, v, input_pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.update(input_pos, k, v)
        return self.attention(q, input_pos, mask)

    def attention(self, q, input_pos: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention of q [B, H, T, D] over what the cache holds (K/V of q's tokens already stored)."""
        b = q.shape[0]
        if q.shape[2] == 1 and _kernels_usable(q, q.shape[-1]):
            from turbopack.inference.kernels.attention import decode_attention

            return decode_attention(q, self, input_pos)
        return sdpa_gqa(q, self.k[:b], self.v[:b], mask, self.scale, self.softcap)


def cache_factory(precision: str | KVPrecision = "bf16", backend: str = "torch"):
    """The `cache_cls` for Transformer.setup_caches: bf16 -> KVCache (or KernelKVCache with the
    triton backend), int8/int4 -> QuantKVCache."""
    fmt = KV_FORMATS.get(precision)
    if backend not in ("torch", "triton"):
        raise ValueError(f"kv backend must be torch or triton, got {backend!r}")
    if fmt.bits == 16:
        return KernelKVCache if backend == "triton" else KVCache
    return functools.partial(QuantKVCache, precision=fmt.precision, backend=backend)


def cache_bytes(precision: str, batch: int, n_kv_heads: int, seq: int, head_dim: int) -> int:
    """Bytes of one layer's K+V cache (codes plus scales/zeros) at this precision."""
    fmt = KV_FORMATS.get(precision)
    per_token = fmt.code_shape(head_dim) * (2 if fmt.bits == 16 else 1)
    per_token += 0 if fmt.bits == 16 else 4 * (1 if fmt.sym else 2)
    return 2 * batch * n_kv_heads * seq * per_token
