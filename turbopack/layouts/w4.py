"""Int4 (w4a16) tile layouts: ``w4_t16x64`` (mma.sync family) and ``w4_t64x64`` (sm90 wgmma).

One (TN x 64) tile of codes is one contiguous block of TN*32 bytes: TN rows of 8 int32 words.
Word j of row r holds the 8 codes of k = 8j..8j+7 (within the tile) with element e in nibble
``NIBBLE_OF_ELEMENT[e]``, the FasterTransformer/TurboMind interleave: ``(w >> 4i) & 0x000F000F``
puts elements 2i and 2i+1 in the two 16-bit halves, so ``| 0x64006400`` yields the fp16 pair
(1024 + q) with one lop3. Scales and (asym) the zero points ``zeros`` (uint8 codes 0..15, folded
into ``-z*s`` in fp32 per group by the kernel, exactly) are [NT, K_pad/G, TN]. The normative
description, with a worked example, is docs/layouts.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from turbopack.errors import BadTensorError, ShapeError
from turbopack.formats import DTYPES, W4A16, Format, FormatName, TensorSpec
from turbopack.layouts.base import Layout, LayoutName, Padding, check_packed, check_rows, pad2d

#: nibble position (0 = bits 0-3) of element e of a word
NIBBLE_OF_ELEMENT = (0, 4, 1, 5, 2, 6, 3, 7)
#: element held by nibble p (the inverse permutation)
ELEMENT_OF_NIBBLE = (0, 2, 4, 6, 1, 3, 5, 7)

# The bit shuffle runs on cache-sized row blocks: numpy's whole-array temporaries would stream
# through DRAM once per operation (~2x slower on a 4096x14336 weight).
_BLOCK_BYTES = 256 << 10
_LO_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
_BYTE_PAIRS = np.uint64(0x00FF00FF00FF00FF)
_HALF_WORDS = np.uint64(0x0000FFFF0000FFFF)


def interleave_words(neutral: np.ndarray) -> np.ndarray:
    """Arch-neutral nibble bytes uint8 [R, C] (C % 8 == 0; byte b = columns 2b | 2b+1 << 4)
    -> uint32 words [R, C/4] in the interleaved order. Works on two words per uint64 lane; every
    shift's spill into the neighbouring word is removed by the following mask."""
    x = neutral.view("<u8")
    lo = x & _LO_NIBBLES           # even elements e0 e2 e4 e6, one per byte
    hi = (x >> np.uint64(4)) & _LO_NIBBLES   # odd elements e1 e3 e5 e7
    for a in (lo, hi):             # 4 bytes holding one nibble each -> 16 bits, in order
        a |= a >> np.uint64(4)
        a &= _BYTE_PAIRS
        a |= a >> np.uint64(8)
        a &= _HALF_WORDS
    hi <<= np.uint64(16)
    lo |= hi
    return lo.view("<u4")


def deinterleave_words(words: np.ndarray) -> np.ndarray:
    """Inverse of :func:`interleave_words`: uint32 [R, W] -> uint8 [R, 4W]."""
    w = np.ascontiguousarray(words).view("<u4")
    lo = w & np.uint32(0xFFFF)
    hi = w >> np.uint32(16)
    for a in (lo, hi):
        a |= a << np.uint32(8)
        a &= np.uint32(0x00FF00FF)
        a |= a << np.uint32(4)
        a &= np.uint32(0x0F0F0F0F)
    hi <<= np.uint32(4)
    lo |= hi
    return lo.view(np.uint8)


def check_zeros(zeros: torch.Tensor, where: str) -> None:
    """Zero points are 4-bit codes: the kernels' per-group fold ``-(z*s)`` is exact in fp32 only
    because z has 4 bits (docs/layouts.md), so anything else is refused, not stored."""
    if zeros.numel() and int(zeros.max()) > 15:
        raise BadTensorError(
            f"{where}: zeros hold {int(zeros.max())}; int4 zero points are 0..15 (re-quantize the weight)"
        )


@dataclass(frozen=True)
class W4Tiled(Layout):
    format: ClassVar[tuple[FormatName, ...]] = (FormatName.W4A16,)
    tile_k: ClassVar[int] = 64
    #: v2: asym zero points stored as uint8 codes ``zeros`` (v1 stored ``szeros = sdt(-z*s)``, lossy in bf16)
    version: ClassVar[int] = 2

    def _int4(self, fmt: Format) -> W4A16:
        """``fmt`` narrowed, once, to the int4 format this layout holds (another format raises)."""
        self.check_format(fmt)
        assert isinstance(fmt, W4A16)  # check_format passed: the name is w4a16, so is the class
        return fmt

    def _dims(self, fmt: Format, shape: tuple[int, int]) -> tuple[Padding, int, int]:
        w4 = self._int4(fmt)
        fmt.check_shape(f"{self.name.value} weight", shape)
        pad = self.padding(shape)
        return pad, pad.n_pad // self.tile_n, pad.k_pad // w4.group_size

    def packed_specs(self, fmt: Format, shape: tuple[int, int]) -> list[TensorSpec]:
        w4 = self._int4(fmt)
        pad, nt, groups = self._dims(fmt, shape)
        sdt = DTYPES[w4.scale_dtype]
        specs = [
            TensorSpec("qweight", torch.int32, (nt, pad.k_pad // self.tile_k, self.tile_n, self.tile_k // 8)),
            TensorSpec("scales", sdt, (nt, groups, self.tile_n)),
        ]
        if not w4.sym:
            specs.append(TensorSpec("zeros", torch.uint8, (nt, groups, self.tile_n)))
        return specs

    def _check_input(self, fmt: Format, q: dict[str, torch.Tensor], shape: tuple[int, int]) -> int:
        """Validate the arch-neutral tensors (a chunk of whole rows); returns their row count."""
        w4 = self._int4(fmt)
        where = f"{self.name.value} pack"
        k, g = shape[1], w4.group_size
        want = {"qweight": (torch.uint8, k // 2), "scales": (DTYPES[w4.scale_dtype], k // g)}
        if not w4.sym:
            want["zeros"] = (torch.uint8, k // g)
        if set(q) != set(want):
            raise ShapeError(f"{where}: got tensors {sorted(q)}, expected {sorted(want)} for {fmt.describe()}")
        rows = {name: check_rows(f"{where}: {name}", q[name], shape, cols) for name, (_, cols) in want.items()}
        for name, (dtype, _) in want.items():
            if q[name].dtype != dtype or rows[name] != rows["qweight"]:
                raise ShapeError(
                    f"{where}: {name} is {q[name].dtype} with {rows[name]} rows; expected {dtype} with "
                    f"{rows['qweight']} rows (as qweight)"
                )
        return rows["qweight"]

    def pack(self, fmt: Format, q: dict[str, torch.Tensor], shape: tuple[int, int]) -> dict[str, torch.Tensor]:
        w4 = self._int4(fmt)
        pad, _, groups = self._dims(fmt, shape)
        rows = self._check_input(fmt, q, shape)
        rows_pad = -(-rows // self.tile_n) * self.tile_n
        out = {"qweight": self._pack_codes(q["qweight"], rows_pad, pad.k_pad)}
        out["scales"] = self._tile_groups(q["scales"], rows_pad, groups)
        if not w4.sym:
            check_zeros(q["zeros"], f"{self.name.value} pack")
            out["zeros"] = self._tile_groups(q["zeros"], rows_pad, groups)
        return out

    def _pack_codes(self, qweight: torch.Tensor, rows_pad: int, k_pad: int) -> torch.Tensor:
        tn, tk = self.tile_n, self.tile_k
        if tuple(qweight.shape) != (rows_pad, k_pad // 2) or not qweight.is_contiguous():
            qweight = pad2d(qweight, rows_pad, k_pad // 2)
        src = qweight.numpy()      # read only below
        nt, kt = rows_pad // tn, k_pad // tk
        out = np.empty((nt, kt, tn, tk // 8), np.uint32)
        step = max(1, _BLOCK_BYTES // (tn * k_pad // 2))
        for t0 in range(0, nt, step):
            t1 = min(nt, t0 + step)
            words = interleave_words(src[t0 * tn : t1 * tn])
            out[t0:t1] = words.reshape(t1 - t0, tn, kt, tk // 8).transpose(0, 2, 1, 3)
        return torch.from_numpy(out.view(np.int32))

    def _tile_groups(self, t: torch.Tensor, rows_pad: int, groups: int) -> torch.Tensor:
        """[rows, K/G] -> [rows_pad/TN, K_pad/G, TN], zero-padded."""
        p = pad2d(t, rows_pad, groups)
        return p.reshape(rows_pad // self.tile_n, self.tile_n, groups).transpose(1, 2).contiguous()

    def unpack(self, fmt: Format, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> dict[str, torch.Tensor]:
        w4 = self._int4(fmt)
        where = f"{self.name.value} unpack"
        for spec in self.packed_specs(fmt, shape):
            check_packed(f"{where}: {spec.suffix}", packed.get(spec.suffix), spec)
        pad, _, groups = self._dims(fmt, shape)
        n, k = shape
        kg = k // w4.group_size
        words = (
            packed["qweight"]
            .contiguous()
            .numpy()
            .view(np.uint32)
            .transpose(0, 2, 1, 3)
            .reshape(pad.n_pad, pad.k_pad // 8)
        )
        codes = deinterleave_words(words)[:n, : k // 2]
        out = {"qweight": torch.from_numpy(np.ascontiguousarray(codes))}

        def untile(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(1, 2).reshape(pad.n_pad, groups)[:n, :kg].clone(memory_format=torch.contiguous_format)

        out["scales"] = untile(packed["scales"])
        if not w4.sym:
            out["zeros"] = untile(packed["zeros"])
        return out


@dataclass(frozen=True)
class W4T16x64(W4Tiled):
    """mma.sync family (sm75/80/86/89): a 16-row tile is the m16 of m16n8k16 with W as A."""

    name: ClassVar[LayoutName] = LayoutName.W4_T16X64
    tile_n: ClassVar[int] = 16


@dataclass(frozen=True)
class W4T64x64(W4Tiled):
    """sm90: 64 rows = wgmma's M; W is the register A operand computing Y^T = W X^T."""

    name: ClassVar[LayoutName] = LayoutName.W4_T64X64
    tile_n: ClassVar[int] = 64
