"""Independent writers of foreign quantized checkpoints, for the import tests.

Each writer draws random integer codes, zeros and scales per linear of a tiny model, packs them
with plain Python loops that follow the format's published rule word by word (no code shared with
turbopack), and returns the float32 weight ``(q - z) * s`` each linear stands for. Everything that
is not a decoder linear is copied from the tiny model unchanged.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

LINEAR = re.compile(r"model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight")
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def _signed32(word: int) -> int:
    return word - (1 << 32) if word >= 1 << 31 else word


def base(tiny: Path, out: Path, quant_config: dict) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, int]]]:
    """Copy tiny's config (+ quantization_config) and return (plain tensors, {module: (N, K)})."""
    out.mkdir(parents=True)
    cfg = json.loads((tiny / "config.json").read_text())
    cfg["quantization_config"] = quant_config
    (out / "config.json").write_text(json.dumps(cfg))
    copy_side(tiny, out)
    sd = load_file(str(tiny / "model.safetensors"))
    plain = {k: v for k, v in sd.items() if not LINEAR.fullmatch(k)}
    linears = {k.removesuffix(".weight"): tuple(v.shape) for k, v in sd.items() if LINEAR.fullmatch(k)}
    return plain, linears


def draw(n: int, k: int, groups: int, gen: torch.Generator, bits: int = 4):
    q = torch.randint(0, 1 << bits, (n, k), generator=gen)
    z = torch.randint(0, 1 << bits, (n, groups), generator=gen)
    s = (torch.rand(n, groups, generator=gen) * 0.02 + 0.001).to(torch.float16)
    return q, z, s


def dequant(q, z, s, col_group) -> torch.Tensor:
    return (q.float() - z.float()[:, col_group]) * s.float()[:, col_group]


def write_awq(tiny: Path, out: Path, group: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """AutoAWQ gemm: qweight [K, N/8] packed along N in AWQ_ORDER, qzeros likewise, scales [K/G, N]."""
    plain, linears = base(tiny, out, {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True,
                                      "version": "gemm"})
    gen = torch.Generator().manual_seed(seed)
    tensors, expect = dict(plain), {}
    for m, (n, k) in linears.items():
        g = k if group == -1 else group
        q, z, s = draw(n, k, k // g, gen)
        qweight = [[0] * (n // 8) for _ in range(k)]
        for kk in range(k):
            for c in range(n // 8):
                word = 0
                for i in range(8):
                    word |= int(q[c * 8 + AWQ_ORDER[i], kk]) << (4 * i)
                qweight[kk][c] = _signed32(word)
        qzeros = [[_signed32(sum(int(z[c * 8 + AWQ_ORDER[i], gg]) << (4 * i) for i in range(8)))
                   for c in range(n // 8)] for gg in range(k // g)]
        tensors[f"{m}.qweight"] = torch.tensor(qweight, dtype=torch.int32)
        tensors[f"{m}.qzeros"] = torch.tensor(qzeros, dtype=torch.int32)
        tensors[f"{m}.scales"] = s.T.contiguous()
        expect[m] = dequant(q, z, s, torch.arange(k) // g)
    save_file(tensors, str(out / "model.safetensors"))
    return expect


def write_gptq(tiny: Path, out: Path, group: int = 32, bits: int = 4, sym: bool = False, v2: bool = False,
               g_idx: str = "plain", seed: int = 0) -> dict[str, torch.Tensor]:
    """GPTQ: qweight [K*b/32, N] packed along K (LSB first), qzeros [K/G, N*b/32] along N storing
    z - 1 (v1) or z (v2), scales [K/G, N], g_idx [K]. g_idx "plain" is k // G, "perm" a random
    act-order permutation, "blocks" a permutation of whole aligned 32-column blocks."""
    qc = {"quant_method": "gptq", "bits": bits, "group_size": group, "sym": sym, "desc_act": g_idx != "plain",
          "checkpoint_format": "gptq_v2" if v2 else "gptq"}
    plain, linears = base(tiny, out, qc)
    gen = torch.Generator().manual_seed(seed)
    per = 32 // bits
    tensors, expect = dict(plain), {}
    for m, (n, k) in linears.items():
        g = k if group == -1 else group
        q, z, s = draw(n, k, k // g, gen, bits)
        if sym:
            z = torch.full_like(z, 1 << (bits - 1))
        elif not v2:
            z = z.clamp(1, (1 << bits) - 1)  # v1 cannot store a zero of 0 (z - 1 = -1 corrupts the word)
        gi = _g_idx(k, g, g_idx, gen)
        qweight = [[_signed32(sum(int(q[nn, r * per + j]) << (bits * j) for j in range(per))) for nn in range(n)]
                   for r in range(k // per)]
        stored = z if v2 else z - 1
        qzeros = [
            [_signed32(sum(int(stored[c * per + j, gg]) << (bits * j) for j in range(per))) for c in range(n // per)]
            for gg in range(k // g)
        ]
        tensors[f"{m}.qweight"] = torch.tensor(qweight, dtype=torch.int32)
        tensors[f"{m}.qzeros"] = torch.tensor(qzeros, dtype=torch.int32)
        tensors[f"{m}.scales"] = s.T.contiguous()
        tensors[f"{m}.g_idx"] = gi.to(torch.int32)
        expect[m] = dequant(q, z, s, gi)
    save_file(tensors, str(out / "model.safetensors"))
    return expect


def _g_idx(k: int, g: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    plain = torch.arange(k) // g
    if kind == "plain":
        return plain
    if kind == "perm":
        return plain[torch.randperm(k, generator=gen)]
    blocks = torch.randperm(k // 32, generator=gen)
    return plain.reshape(-1, 32)[blocks].reshape(-1)


def copy_side(tiny: Path, out: Path) -> None:
    for f in tiny.iterdir():
        if f.suffix == ".json" and f.name != "config.json":
            shutil.copy2(f, out / f.name)
