"""Shared cases for the layout tests: every (layout, format) pair and random arch-neutral tensors.

Random tensors are generated directly (not through ``quantize``) so that every code and a wide
range of scale values (subnormal to huge) go through pack/unpack.
"""

from __future__ import annotations

import numpy as np
import torch

from turbopack.formats import DTYPES, Format, get_format
from turbopack.layouts import LAYOUTS, get_layout

FORMATS: dict[str, Format] = {
    **{f"w4-{'sym' if sym else 'asym'}-g{g}-{sd[:4]}": get_format("w4a16", group_size=g, sym=sym, scale_dtype=sd)
       for sym in (True, False) for g in (32, 64, 128) for sd in ("bfloat16", "float16")},
    "w8a16": get_format("w8a16"),
    "w8a8": get_format("w8a8"),
    "fp8-channel": get_format("fp8"),
    "fp8-tensor": get_format("fp8", per_tensor=True),
    "nvfp4": get_format("nvfp4"),
}

#: every (layout name, format key) that can be packed
PAIRS: list[tuple[str, str]] = [
    (name, key) for name in LAYOUTS for key, fmt in FORMATS.items() if fmt.name in get_layout(name).format
]

def valid_k(fmt: Format, k: int) -> bool:
    return k % getattr(fmt, "group_size", 1) == 0


def _positive_scales(rng: np.random.Generator, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Positive finite scales spread over the dtype's exponent range, subnormals included, small
    enough that 15*s stays finite (realistic quantizers never get near that)."""
    lo, hi = {torch.bfloat16: (-133, 120), torch.float16: (-24, 11), torch.float32: (-140, 120)}[dtype]
    s = torch.from_numpy(rng.uniform(1, 2, shape) * np.exp2(rng.integers(lo, hi, shape))).to(dtype)
    return torch.where(s == 0, torch.full_like(s, 2.0**lo), s)


def random_neutral(fmt: Format, rows: int, k: int, seed: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    name = fmt.name.value
    if name == "w4a16":
        g = fmt.group_size  # type: ignore[attr-defined]
        q = {"qweight": torch.from_numpy(rng.integers(0, 256, (rows, k // 2), dtype=np.uint8)),
             "scales": _positive_scales(rng, (rows, k // g), DTYPES[fmt.scale_dtype])}  # type: ignore[attr-defined]
        if not fmt.sym:  # type: ignore[attr-defined]
            q["zeros"] = torch.from_numpy(rng.integers(0, 16, (rows, k // g), dtype=np.uint8))
        return q
    if name == "nvfp4":  # every code; every positive finite e4m3 scale (bytes 0x00-0x7E)
        return {"qweight": torch.from_numpy(rng.integers(0, 256, (rows, k // 2), dtype=np.uint8)),
                "scales": torch.from_numpy(rng.integers(0, 0x7F, (rows, k // 16), dtype=np.uint8)).view(
                    torch.float8_e4m3fn),
                "global_scale": _positive_scales(rng, (1,), torch.float32)}
    codes = torch.from_numpy(rng.integers(0, 256, (rows, k), dtype=np.uint8))
    if name == "fp8":
        n_scales = 1 if fmt.per_tensor else rows  # type: ignore[attr-defined]
        return {"qweight": codes.view(torch.float8_e4m3fn), "scales": _positive_scales(rng, (n_scales,), torch.float32)}
    return {"qweight": codes.view(torch.int8), "scales": _positive_scales(rng, (rows,), torch.float32)}


def quantized(fmt: Format, n: int, k: int, seed: int) -> dict[str, torch.Tensor]:
    """Realistic tensors: the format's own quantization of a random weight (with some outliers)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[torch.rand(n, k, generator=g) < 0.01] *= 8
    return fmt.quantize(w, fmt.tensor_stats([w]) if fmt.needs_tensor_stats else None)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes, so NaN payloads and -0.0 compare exactly."""
    return t.contiguous().view(torch.uint8) if t.dtype.itemsize == 1 else t.contiguous().view(torch.uint8).reshape(-1)


def assert_bit_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str = "") -> None:
    assert set(got) == set(want), f"{what}: tensors {sorted(got)} != {sorted(want)}"
    for key in want:
        a, b = got[key], want[key]
        assert a.dtype == b.dtype and a.shape == b.shape, (
            f"{what}.{key}: {a.dtype} {list(a.shape)} != {b.dtype} {list(b.shape)}"
        )
        assert torch.equal(bits(a), bits(b)), f"{what}.{key}: bytes differ"
