"""Device-side helpers for checking and benchmarking the kernels: torch packers that follow the
layout spec (docs/layouts.md) on any device, and float64 references of each layout's contract.

``turbopack.layouts`` is the source of truth for what goes to disk; its packers run on the CPU
(numpy), which is slow for an 8B-model-sized weight on a benchmark machine. These re-implement
the same bytes with torch ops so a 28672x4096 weight packs on the GPU in milliseconds; the tests
check that both give identical tensors. The references compute from the arch-neutral tensors
(never from the packed ones), so a test compares two independent paths.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from turbopack.formats.fp8 import quantize_rows_fp8
from turbopack.formats.int8 import quantize_rows_int8
from turbopack.formats.nvfp4 import e2m1_table
from turbopack.layouts.base import Layout
from turbopack.layouts.int8 import ByteLayout
from turbopack.layouts.nvfp4 import NVFP4T16x64

#: nibble position of element e in a w4 word (the FasterTransformer interleave)
NIBBLE_OF_ELEMENT = (0, 4, 1, 5, 2, 6, 3, 7)


def _pad(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return F.pad(t, (0, cols - t.shape[1], 0, rows - t.shape[0]))


def _up(v: int, m: int) -> int:
    return math.ceil(v / m) * m


def w4_codes(qweight: torch.Tensor) -> torch.Tensor:
    """Arch-neutral nibble bytes uint8 [N, K/2] -> codes uint8 [N, K] (any device)."""
    return torch.stack([qweight & 15, qweight >> 4], -1).reshape(qweight.shape[0], -1)


def pack_w4(q: dict[str, torch.Tensor], tile_n: int) -> dict[str, torch.Tensor]:
    """w4a16 arch-neutral tensors -> w4_t{16,64}x64 packed tensors, on q's device."""
    codes = w4_codes(q["qweight"]).to(torch.int64)
    n, k = codes.shape
    s = q["scales"]
    group = k // s.shape[1]
    n_pad, k_pad = _up(n, tile_n), _up(k, 64)
    c = _pad(codes, n_pad, k_pad).view(n_pad // tile_n, tile_n, k_pad // 64, 8, 8).permute(0, 2, 1, 3, 4)
    shifts = torch.tensor([4 * p for p in NIBBLE_OF_ELEMENT], device=codes.device)
    words = (c << shifts).sum(-1)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32).contiguous()

    def tile_groups(t: torch.Tensor) -> torch.Tensor:
        p = _pad(t, n_pad, k_pad // group)
        return p.view(n_pad // tile_n, tile_n, -1).transpose(1, 2).contiguous()

    out = {"qweight": words, "scales": tile_groups(s)}
    if "zeros" in q:  # the uint8 zero points as they are, tiled like the scales (layout v2)
        out["zeros"] = tile_groups(q["zeros"])
    return out


def pack_bytes(qweight: torch.Tensor, scales: torch.Tensor, tile_n: int, tile_k: int | None) -> dict[str, torch.Tensor]:
    """int8 / e4m3 codes [N, K] -> tiled [NT, K_pad/64, TN, 64] (tile_k=64) or row-major
    [N_pad/TN, TN, K_pad] (tile_k=None: K padded to 16); scales float32 padded with 0."""
    n, k = qweight.shape
    n_pad, k_pad = _up(n, tile_n), _up(k, tile_k or 16)
    b = _pad(qweight.view(torch.uint8), n_pad, k_pad)
    if tile_k is None:
        packed = b.view(n_pad // tile_n, tile_n, k_pad)
    else:
        packed = b.view(n_pad // tile_n, tile_n, k_pad // tile_k, tile_k).transpose(1, 2).contiguous()
    s = scales if scales.numel() == 1 else F.pad(scales, (0, n_pad - n))
    return {"qweight": packed.view(qweight.dtype), "scales": s.contiguous()}


def pack_nvfp4(q: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """nvfp4 arch-neutral tensors -> nvfp4_t16x64 packed tensors, on q's device: the bytes of
    codes and scales tiled 16 rows x 64 columns (32 code bytes, 4 scale bytes per tile row)."""
    n, k = q["qweight"].shape[0], q["qweight"].shape[1] * 2
    n_pad, k_pad = _up(n, 16), _up(k, 64)

    def tiles(t: torch.Tensor, cols: int) -> torch.Tensor:
        p = _pad(t, n_pad, k_pad * cols // 64)
        return p.view(n_pad // 16, 16, k_pad // 64, cols).transpose(1, 2).contiguous()

    scales = tiles(q["scales"].view(torch.uint8), 4).view(torch.float8_e4m3fn)
    return {"qweight": tiles(q["qweight"], 32), "scales": scales, "global_scale": q["global_scale"].float().clone()}


# -- float64 references of the contracts, computed from the arch-neutral tensors -----------------

def pack(q: dict[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """Arch-neutral tensors -> ``layout``'s packed tensors, on q's device (what layout.pack writes)."""
    if isinstance(layout, NVFP4T16x64):
        return pack_nvfp4(q)
    if isinstance(layout, ByteLayout):
        return pack_bytes(q["qweight"], q["scales"], layout.tile_n, None if layout.rowmajor else layout.tile_k)
    return pack_w4(q, layout.tile_n)


def w4_weight16(q: dict[str, torch.Tensor], act: torch.dtype) -> torch.Tensor:
    """w16 = act((q - z)*s) (sym: z = 8) as [N, K] in ``act``: the contract's fp32
    fma(q, s, -(z*s)) is exactly (q - z)*s, so the reference computes it directly."""
    codes = w4_codes(q["qweight"]).float()
    n, k = codes.shape
    s = q["scales"].float()
    group = k // s.shape[1]
    z = q["zeros"].float() if "zeros" in q else torch.full_like(s, 8.0)
    w = (codes - z.repeat_interleave(group, 1)) * s.repeat_interleave(group, 1)
    return w.to(act)


#: the 8-bit formats whose contract also rounds x to 8 bits; ``weights_only`` keeps x 16-bit (the CUDA
#: 8-bit decode's math, cuda_w8)
QUANTIZED_X = ("fp8", "w8a8")


def ref_linear(x: torch.Tensor, fmt_name: str, q: dict[str, torch.Tensor], bias: torch.Tensor | None = None,
               weights_only: bool = False) -> torch.Tensor:
    """float64 reference of the kernel contract for ``fmt_name`` (w4a16, w8a16, w8a8, fp8, nvfp4), in float32."""
    x2 = x.reshape(-1, x.shape[-1])
    if fmt_name == "w4a16":
        y = x2.double() @ w4_weight16(q, x.dtype).double().T
    elif fmt_name == "w8a16" or (fmt_name in QUANTIZED_X and weights_only):
        s = q["scales"].double()
        y = (x2.double() @ q["qweight"].double().T) * (s if s.numel() > 1 else s[0])
    elif fmt_name == "nvfp4":  # e2m1 * e4m3 is exact; 1/gs once, after the sum
        v = e2m1_table(torch.float64).to(x.device)[w4_codes(q["qweight"]).long()]
        w = v * q["scales"].double().repeat_interleave(16, 1)
        y = (x2.double() @ w.T) / q["global_scale"].double()
    elif fmt_name == "w8a8":
        qx, sx = quantize_rows_int8(x2)
        y = (qx.double() @ q["qweight"].double().T) * sx.double()[:, None] * q["scales"].double()[None, :]
    elif fmt_name == "fp8":
        qx, sx = quantize_rows_fp8(x2)
        s = q["scales"].double()
        y = (qx.double() @ q["qweight"].double().T) * sx.double()[:, None] * (s[None, :] if s.numel() > 1 else s[0])
    else:
        raise ValueError(f"no reference for format {fmt_name!r}")
    if bias is not None:
        y = y + bias.double()
    return y.float().reshape(*x.shape[:-1], -1)


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error; inf when y holds NaN/Inf (a poisoned element never written)."""
    y, ref = y.double(), ref.double()
    if not bool(torch.isfinite(y).all()):
        return math.inf
    return float(torch.linalg.vector_norm(y - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))
