"""AutoAWQ "gemm" checkpoints -> our w4a16 (asymmetric), exactly.

AutoAWQ's WQLinear_GEMM stores, per linear of shape [N, K]:
  qweight int32 [K, N/8]   packed along N: bits [4i, 4i+4) of word c hold column 8c + ORDER[i],
                           ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
  qzeros  int32 [K/G, N/8] the same packing, raw zero points (no offset)
  scales  fp16  [K/G, N]
  w[n, k] = (q[k, n] - z[k // G, n]) * s[k // G, n]
which is our asymmetric int4 with scale dtype float16: codes and zeros are copied, transposed to
[N, ...], and re-packed two per byte.
"""

from __future__ import annotations

import torch

from turbopack.formats import Format, get_format
from turbopack.formats.int4 import pack_nibbles
from turbopack.packer.interop.base import (
    ConvertError,
    Importer,
    ModuleJob,
    block_groups,
    columns_group,
    expand_groups,
    feasible_group_sizes,
    pick_group_size,
    unpack_lsb,
    w4_scale_dtype,
)

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, N/8] in AWQ nibble order -> codes int64 [R, N] in column order."""
    nib = unpack_lsb(packed, 4, dim=1).reshape(packed.shape[0], -1, 8)  # [R, N/8, nibble i]
    out = torch.empty_like(nib)
    out[:, :, list(AWQ_ORDER)] = nib  # nibble i is column ORDER[i] of its 8-column block
    return out.reshape(packed.shape[0], -1)


class AWQImporter(Importer):
    quant_methods = ("awq",)
    method = "awq"

    def _version(self) -> str:
        for key in ("version", "format", "checkpoint_format"):
            if key in self.qcfg:
                return str(self.qcfg[key]).lower()
        return "gemm"

    def plan(self) -> tuple[Format, list[ModuleJob]]:
        bits, version = int(self.qcfg.get("bits", self.qcfg.get("w_bit", 4))), self._version()
        if bits != 4:
            raise ConvertError(f"{self.where}: AWQ with {bits} bits; only 4-bit AWQ exists in AutoAWQ's gemm format")
        if version != "gemm":
            raise ConvertError(f"{self.where}: AWQ version {version!r}; only 'gemm' checkpoints are read "
                               f"(gemv/marlin/exllama pack differently; re-export as gemm)")
        if not self.qcfg.get("zero_point", True):
            raise ConvertError(
                f"{self.where}: AWQ with zero_point=false is not a gemm format AutoAWQ writes; cannot import"
            )
        jobs = []
        for name, entry in self.ckpt.tensors.items():
            if not name.endswith(".qweight"):
                continue
            prefix = name.removesuffix(".qweight")
            qz, sc = self.header(f"{prefix}.qzeros"), self.header(f"{prefix}.scales")
            k, n8 = entry.shape
            n = sc.shape[1] if len(sc.shape) == 2 else -1
            if (
                entry.dtype != torch.int32
                or qz.dtype != torch.int32
                or n != n8 * 8
                or tuple(qz.shape) != (sc.shape[0], n8)
            ):
                raise ConvertError(f"{self.where}: {prefix}: qweight {list(entry.shape)}, qzeros {list(qz.shape)}, "
                                   f"scales {list(sc.shape)} are not AWQ gemm shapes [K, N/8], [K/G, N/8], [K/G, N]")
            jobs.append(ModuleJob(prefix, (n, k), (name, qz.name, sc.name)))
        if not jobs:
            raise ConvertError(
                f"{self.where}: quant_method awq but no *.qweight tensors; the checkpoint is not AutoAWQ gemm"
            )
        self._group = int(self.qcfg.get("group_size", self.qcfg.get("q_group_size", 128)))
        scale_names = [j.sources[2] for j in jobs]
        sdt = w4_scale_dtype(
            {self.header(s).dtype for s in scale_names}, lambda: map(self.read, scale_names), self.where
        )
        gs = self._check_groups(jobs)
        return get_format("w4a16", group_size=gs, sym=False, scale_dtype=sdt), jobs

    def _check_groups(self, jobs: list[ModuleJob]) -> int:
        sizes = []
        for job in jobs:
            n, k = job.shape
            g = k if self._group == -1 else self._group
            rows = self.header(job.sources[2]).shape[0]
            if k % g or rows != k // g:
                raise ConvertError(
                    f"{self.where}: {job.module}: {rows} scale rows for K={k} and group size {g}; the checkpoint is "
                    "inconsistent"
                )
            sizes.append(feasible_group_sizes(columns_group(None, k, g, rows, job.module), k, job.module))
        return pick_group_size(sizes, self.where)

    def convert(self, job: ModuleJob, fmt: Format) -> dict[str, torch.Tensor]:
        n, k = job.shape
        qweight, qzeros, scales = (self.read(s) for s in job.sources)
        g = k if self._group == -1 else self._group
        codes = unpack_awq(qweight).T  # [N, K]
        zeros = unpack_awq(qzeros).T  # [N, K/G]
        src = block_groups(columns_group(None, k, g, scales.shape[0], job.module), k, fmt.group_size)
        sdt = {"float16": torch.float16, "bfloat16": torch.bfloat16}[fmt.scale_dtype]
        return {
            "qweight": pack_nibbles(codes.to(torch.uint8)),
            "scales": expand_groups(scales.T.float(), src).to(sdt),
            "zeros": expand_groups(zeros, src).to(torch.uint8),
        }
