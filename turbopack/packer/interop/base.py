"""What every importer of a foreign quantized checkpoint shares: the job it plans per linear, the
exact re-grouping of scales, and the scale-dtype rule.

An importer reads one foreign format (AWQ, GPTQ, compressed-tensors) and yields, per quantized
linear, the arch-neutral tensors of one of our formats (turbopack.formats). "Exact" is the only
mode: the dequantized weight of the output equals the source's ``(q - z) * s`` bit for bit, or the
importer refuses with one line that says why no exact mapping exists.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from turbopack.checkpoint import Checkpoint
from turbopack.errors import ShapeError, TurbopackError
from turbopack.formats import Format
from turbopack.formats.int4 import GROUP_SIZES


class ConvertError(TurbopackError):
    """A foreign checkpoint that cannot be mapped exactly onto one of our formats."""


@dataclass(frozen=True)
class ModuleJob:
    """One quantized linear of the source: ``module`` prefix, original (N, K), the source tensors
    it consumes (read together, dropped from the plain copy)."""

    module: str
    shape: tuple[int, int]
    sources: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


class Importer(ABC):
    """Plans and converts one foreign checkpoint. Subclasses register in convert.IMPORTERS."""

    #: quant_method value(s) in the source's quantization_config that select this importer
    quant_methods: ClassVar[tuple[str, ...]]
    #: what the manifest records as ``method``
    method: ClassVar[str]

    def __init__(self, ckpt: Checkpoint, qcfg: dict[str, Any], where: str):
        self.ckpt, self.qcfg, self.where = ckpt, qcfg, where

    @abstractmethod
    def plan(self) -> tuple[Format, list[ModuleJob]]:
        """Validate the config and every tensor header; the one target format and the jobs."""

    @abstractmethod
    def convert(self, job: ModuleJob, fmt: Format) -> dict[str, torch.Tensor]:
        """The arch-neutral tensors {suffix: tensor} of ``fmt`` for one job (whole module)."""

    def dropped(self, jobs: list[ModuleJob]) -> dict[str, str]:
        """Source tensors consumed but not carried over, with why (recorded in the manifest)."""
        return {}

    def read(self, name: str) -> torch.Tensor:
        return self.ckpt.read(name)

    def header(self, name: str):
        try:
            return self.ckpt.tensors[name]
        except KeyError:
            raise ConvertError(f"{self.where}: tensor {name!r} is missing; the checkpoint is incomplete") from None


def columns_group(g_idx: torch.Tensor | None, k: int, group: int, n_groups: int, where: str) -> torch.Tensor:
    """Group index of each input column k (from g_idx, else contiguous groups of ``group``)."""
    if g_idx is None:
        return torch.arange(k) // group
    g = g_idx.to(torch.int64).reshape(-1)
    if g.numel() != k:
        raise ConvertError(f"{where}: g_idx has {g.numel()} entries for K={k}; the checkpoint is inconsistent")
    if int(g.min()) < 0 or int(g.max()) >= n_groups:
        raise ConvertError(f"{where}: g_idx values outside [0, {n_groups}); the checkpoint is corrupt")
    return g


def feasible_group_sizes(col_group: torch.Tensor, k: int, where: str) -> set[int]:
    """Our group sizes G' (128, 64, 32) whose aligned column blocks each lie inside one source
    group, so that every column keeps its own scale and zero: exact.

    This covers contiguous source groups of 32/64/128, larger ones (256, per-channel), and
    act-order g_idx whose permutation happens to keep aligned blocks together. A genuine act-order
    permutation (the columns of one group scattered along K) has no contiguous-group equivalent:
    permuting K would need the previous layer's output permuted the same way, which is impossible
    where one RMSNorm output feeds several projections. That case raises here.
    """
    fits = set()
    for gs in GROUP_SIZES:
        if k % gs == 0:
            blocks = col_group.reshape(k // gs, gs)
            if bool((blocks == blocks[:, :1]).all()):
                fits.add(gs)
    if fits:
        return fits
    if any(k % gs == 0 for gs in GROUP_SIZES):
        raise ConvertError(
            f"{where}: act-order (desc_act) g_idx scatters the columns of one quantization group along K; "
            f"turbopack's int4 groups are contiguous runs of {'/'.join(map(str, GROUP_SIZES))} columns and K cannot "
            f"be permuted without permuting the previous layer too. Re-quantize with desc_act=False (or "
            f"static_groups=True), or run `turbopack quantize` on the original model")
    raise ShapeError(
        f"{where}: K={k} is not a multiple of any int4 group size {GROUP_SIZES}; keep this layer unquantized at the "
        "source"
    )


def pick_group_size(per_module: list[set[int]], where: str) -> int:
    """The largest group size every module can take (one folder holds one format)."""
    common = set(GROUP_SIZES).intersection(*per_module)
    if not common:
        raise ConvertError(f"{where}: no single int4 group size fits every module (each fits one of "
                           f"{sorted({max(s) for s in per_module})}); one folder holds one format")
    return max(common)


def block_groups(col_group: torch.Tensor, k: int, gs: int) -> torch.Tensor:
    """Source group index of each of our K/gs groups (gs from :func:`feasible_group_sizes`)."""
    return col_group.reshape(k // gs, gs)[:, 0].clone()


def expand_groups(t: torch.Tensor, src_of_group: torch.Tensor) -> torch.Tensor:
    """[N, G_src] per-source-group values -> [N, K/G'] per our group (exact copy)."""
    return t[:, src_of_group].contiguous()


def w4_scale_dtype(dtypes: set[torch.dtype], read_all, where: str) -> str:
    """Our int4 scale dtype for source scales: fp16/bf16 map as they are; fp32 only if every value
    is exactly a bf16 (or fp16) number, since our int4 scales are 16-bit."""
    if dtypes == {torch.float16}:
        return "float16"
    if dtypes == {torch.bfloat16}:
        return "bfloat16"
    if dtypes <= {torch.float32, torch.float16, torch.bfloat16}:
        scales = [s.float() for s in read_all()]
        for name, dt in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
            if all(torch.equal(s.to(dt).float(), s) for s in scales):
                return name
        raise ConvertError(f"{where}: int4 scales are float32 values that no 16-bit dtype holds exactly; "
                           f"turbopack's int4 scales are bf16/fp16, so this checkpoint cannot be imported exactly")
    got = ", ".join(sorted(str(d) for d in dtypes))
    raise ConvertError(f"{where}: int4 scales have dtype {got}; expected float16/bfloat16/float32")


def unpack_lsb(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """int32 words -> unsigned codes (int64), value j of a word at bits [j*bits, (j+1)*bits),
    unpacked along ``dim`` (each word expands into 32/bits consecutive entries)."""
    per = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int64)
    w = packed.to(torch.int64) & 0xFFFFFFFF
    if dim == 0:
        codes = (w[:, None, :] >> shifts[None, :, None]) & ((1 << bits) - 1)
        return codes.reshape(packed.shape[0] * per, packed.shape[1])
    codes = (w[:, :, None] >> shifts[None, None, :]) & ((1 << bits) - 1)
    return codes.reshape(packed.shape[0], packed.shape[1] * per)


def pack_lsb(codes: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Inverse of :func:`unpack_lsb`: unsigned codes (< 2**bits) -> int32 words along ``dim``
    (the length along ``dim`` is zero-padded to whole words)."""
    per = 32 // bits
    c = codes.to(torch.int64)
    if dim == 0:
        c = c.T
    pad = -c.shape[1] % per
    if pad:
        c = torch.nn.functional.pad(c, (0, pad))
    shifts = torch.arange(0, 32, bits, dtype=torch.int64)
    words = (c.reshape(c.shape[0], -1, per) << shifts).sum(-1)
    words = torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)
    return words.T.contiguous() if dim == 0 else words.contiguous()
