"""GPTQ checkpoints (AutoGPTQ / GPTQModel / transformers) -> our w4a16 or w8a16, exactly.

Per linear of shape [N, K] with b bits (32/b values per int32 word, LSB first):
  qweight int32 [K*b/32, N]      packed along K: bits [b*j, b*j+b) of row r hold input column r*32/b + j
  qzeros  int32 [K/G, N*b/32]    packed along N the same way
  scales  fp16  [K/G, N]
  g_idx   int32 [K]              group of each input column (act-order permutes it)
  w[n, k] = (q[k, n] - z[g_idx[k], n]) * s[g_idx[k], n]
checkpoint_format "gptq" (v1, AutoGPTQ) stores z - 1 and readers add 1 back per value;
"gptq_v2" (GPTQModel) stores z itself.

Mapping: 4-bit -> w4a16 (sym when the config says sym: every zero is then 8, matching our
offset-binary codes), scale dtype as stored. 8-bit -> w8a16 only when there is one group per row
and zero 128 (symmetric per-channel), the only int8 form we have.
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

CHECKPOINT_FORMATS = ("gptq", "gptq_v2")


class GPTQImporter(Importer):
    quant_methods = ("gptq",)
    method = "gptq"

    def _settings(self) -> None:
        q = self.qcfg
        self.bits = int(q.get("bits", 4))
        self.group = int(q.get("group_size", 128))
        self.sym = bool(q.get("sym", True))
        fmt = (
            q.get("checkpoint_format") or (q.get("format") if q.get("format") in CHECKPOINT_FORMATS else None) or "gptq"
        )
        self.v2 = str(fmt).lower() == "gptq_v2"
        if str(fmt).lower() not in CHECKPOINT_FORMATS:
            raise ConvertError(f"{self.where}: GPTQ checkpoint_format {fmt!r}; only 'gptq' (v1) and 'gptq_v2' are read "
                               f"(marlin/bitblas layouts are engine-specific; re-save as gptq)")
        if str(q.get("pack_dtype", "int32")).removeprefix("torch.") != "int32":
            raise ConvertError(f"{self.where}: GPTQ pack_dtype {q['pack_dtype']!r}; only int32 packing is read")
        if self.bits not in (4, 8):
            raise ConvertError(f"{self.where}: GPTQ with {self.bits} bits; turbopack has int4 and int8 formats only")

    def plan(self) -> tuple[Format, list[ModuleJob]]:
        self._settings()
        per = 32 // self.bits
        jobs = []
        for name, entry in self.ckpt.tensors.items():
            if not name.endswith(".qweight"):
                continue
            prefix = name.removesuffix(".qweight")
            qz, sc = self.header(f"{prefix}.qzeros"), self.header(f"{prefix}.scales")
            n = sc.shape[1] if len(sc.shape) == 2 else -1
            k = entry.shape[0] * per
            if entry.dtype != torch.int32 or entry.shape[1] != n or tuple(qz.shape) != (sc.shape[0], -(-n // per)):
                raise ConvertError(
                    f"{self.where}: {prefix}: qweight {list(entry.shape)}, qzeros {list(qz.shape)}, scales "
                    f"{list(sc.shape)} are not {self.bits}-bit GPTQ shapes [K*b/32, N], [K/G, N*b/32], [K/G, N]"
                )
            srcs = (name, qz.name, sc.name) + ((f"{prefix}.g_idx",) if f"{prefix}.g_idx" in self.ckpt.tensors else ())
            jobs.append(ModuleJob(prefix, (n, k), srcs))
        if not jobs:
            raise ConvertError(f"{self.where}: quant_method gptq but no *.qweight tensors; not a GPTQ checkpoint")
        if self.bits == 8:
            return get_format("w8a16"), jobs
        scale_names = [j.sources[2] for j in jobs]
        sdt = w4_scale_dtype(
            {self.header(s).dtype for s in scale_names}, lambda: map(self.read, scale_names), self.where
        )
        gs = pick_group_size(
            [feasible_group_sizes(self._col_group(job), job.shape[1], job.module) for job in jobs], self.where
        )
        return get_format("w4a16", group_size=gs, sym=self.sym, scale_dtype=sdt), jobs

    def _col_group(self, job: ModuleJob) -> torch.Tensor:
        n, k = job.shape
        rows = self.header(job.sources[2]).shape[0]
        g_idx = self.read(job.sources[3]) if len(job.sources) > 3 else None
        g = k if self.group == -1 else self.group
        if g_idx is None and (k % g or rows != k // g):
            raise ConvertError(
                f"{self.where}: {job.module}: {rows} scale rows for K={k} and group size {g}; the checkpoint is "
                "inconsistent"
            )
        return columns_group(g_idx, k, g, rows, job.module)

    def _zeros(self, job: ModuleJob, qzeros: torch.Tensor, n: int) -> torch.Tensor:
        z = unpack_lsb(qzeros, self.bits, dim=1)[:, :n].T  # [N, n_groups]
        if not self.v2:
            z = z + 1  # v1 stored z - 1
        top = (1 << self.bits) - 1
        if int(z.max()) > top:
            raise ConvertError(
                f"{self.where}: {job.module}: a GPTQ v1 zero point reads as {top + 1} (stored nibble {top}: either a "
                f"real zero of {top + 1} or a zero of 0 corrupted by v1's z-1 packing); {self.bits}-bit zeros stop "
                f"at {top}, so no exact import exists"
            )
        return z

    def convert(self, job: ModuleJob, fmt: Format) -> dict[str, torch.Tensor]:
        n, k = job.shape
        qweight, qzeros, scales = (self.read(s) for s in job.sources[:3])
        codes = unpack_lsb(qweight, self.bits, dim=0).T  # [N, K]
        zeros = self._zeros(job, qzeros, n)
        if self.bits == 8:
            return self._int8(job, codes, zeros, scales)
        src = block_groups(self._col_group(job), k, fmt.group_size)
        if fmt.sym and not bool((zeros == 8).all()):
            raise ConvertError(
                f"{self.where}: {job.module}: config says sym=true but zero points are not all 8; "
                f"the checkpoint is inconsistent (set sym=false in its quantize config to import it as asymmetric)"
            )
        sdt = {"float16": torch.float16, "bfloat16": torch.bfloat16}[fmt.scale_dtype]
        out = {"qweight": pack_nibbles(codes.to(torch.uint8)), "scales": expand_groups(scales.T.float(), src).to(sdt)}
        if not fmt.sym:
            out["zeros"] = expand_groups(zeros, src).to(torch.uint8)
        return out

    def _int8(
        self, job: ModuleJob, codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if scales.shape[0] != 1 or not bool((zeros == 128).all()):
            raise ConvertError(
                f"{self.where}: {job.module}: 8-bit GPTQ with {scales.shape[0]} group(s) per row and zeros "
                f"{'128' if bool((zeros == 128).all()) else 'not all 128'}; turbopack's int8 is symmetric per output "
                f"channel (one scale per row, no zero), so only group_size=-1, sym=true 8-bit GPTQ imports exactly")
        q = (codes - 128).to(torch.int8)
        return {"qweight": q.contiguous(), "scales": scales[0].float().contiguous()}
