"""What `turbopack pack` reads: an arch-neutral quantized folder, or a Hugging Face folder that is
quantized (RTN) on the fly, module by module, as packing asks for it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from turbopack.checkpoint import MANIFEST_NAME, Checkpoint, read_manifest
from turbopack.checkpoint.quantized import QuantizedCheckpoint
from turbopack.checkpoint.resume import source_fingerprint
from turbopack.errors import CheckpointError, TurbopackError
from turbopack.formats import Format, check_finite, format_from_params
from turbopack.packer.folder import quant_config, weight_stats
from turbopack.packer.jobs import plan_jobs
from turbopack.packer.options import FormatSpec


@dataclass
class Source:
    """What packing reads: ``modules`` {module: (format, shape)}, ``plain`` tensors, in file order."""

    folder: Path
    ckpt: Checkpoint
    config: dict
    modules: dict[str, tuple[Format, tuple[int, int]]]
    plain: list[str]
    order: list[str]  # module and plain tensor names, in source file order
    unquantized: dict[str, str]
    quant_config: dict
    manifest_sha256: str | None
    format_params: dict
    reader: Any = None  # QuantizedCheckpoint, or None when quantizing on the fly
    _stats: dict = field(default_factory=dict, repr=False)

    def module(self, name: str) -> dict[str, torch.Tensor]:
        return self.module_rows(name, 0, self.modules[name][1][0])

    def module_rows(self, name: str, r0: int, r1: int) -> dict[str, torch.Tensor]:
        """Rows [r0, r1) of a module's arch-neutral tensors (tensor-wide ones whole)."""
        fmt, shape = self.modules[name]
        if self.reader is None:
            return self._quantize_rows(name, r0, r1)
        whole = (r0, r1) == (0, shape[0])
        return {s.suffix: self.ckpt.read(f"{name}.{s.suffix}") if whole or not s.per_row
                else self.ckpt.read_rows(f"{name}.{s.suffix}", r0, r1) for s in fmt.specs(shape)}

    def _quantize_rows(self, name: str, r0: int, r1: int) -> dict[str, torch.Tensor]:
        fmt, _ = self.modules[name]
        weight = name + ".weight"
        stats = self._stats.get(name)
        if stats is None and fmt.needs_tensor_stats:  # tensor-wide (fp8 per-tensor, nvfp4): a pass over the rows
            stats = weight_stats(self.ckpt, weight, fmt)
            self._stats = {name: stats}  # one module at a time: chunks of it reuse its stats
        w = self.ckpt.read_rows(weight, r0, r1)
        check_finite(f"{self.ckpt.location[weight].name}:{weight}", w)
        return fmt.quantize(w, stats)

    def module_bytes(self, name: str) -> int:
        fmt, shape = self.modules[name]
        return sum(s.nbytes for s in fmt.specs(shape))

    def fingerprint(self) -> dict[str, Any]:
        """What this source is, for a resumed pack: its files, format, and what stays unquantized."""
        return {**source_fingerprint(self.folder, list(self.ckpt.location.values()), self.manifest_sha256),
                "format": self.format_params, "unquantized": sorted(self.unquantized)}


def open_source(path: str | Path, spec: FormatSpec | None = None) -> Source:
    """The quantized folder PATH, or (with ``spec``) the HF folder PATH quantized on the fly."""
    ckpt = Checkpoint.open(path)
    manifest_path = ckpt.folder / MANIFEST_NAME
    if not manifest_path.exists():
        if spec is None:
            raise CheckpointError(f"{ckpt.folder}: not a quantized folder (no {MANIFEST_NAME}); pass --format w4a16 "
                                  f"to quantize and pack in one go, or run `turbopack quantize` first")
        return _on_the_fly(ckpt, spec)
    manifest = read_manifest(ckpt.folder)
    if manifest["kind"] != "quantized":
        raise CheckpointError(f"{ckpt.folder}: is a {manifest['kind']} folder; pack the quantized folder it came "
                              f"from ({manifest.get('source')})")
    if spec is not None:
        raise TurbopackError(f"{ckpt.folder}: already quantized ({manifest.get('format', {}).get('format')}); "
                             f"drop --format")
    reader = QuantizedCheckpoint(ckpt.folder)
    modules = {m: (format_from_params(i["format"]), tuple(i["shape"])) for m, i in reader.modules.items()}
    owner = {t: m for m, i in reader.modules.items() for t in i["tensors"]}
    order = list(dict.fromkeys(owner.get(n, n) for n in ckpt.tensors))
    return Source(ckpt.folder, ckpt, ckpt.config, modules, reader.plain, order, manifest.get("unquantized", {}),
                  dict(ckpt.config.get("quantization_config", {})),
                  hashlib.sha256(manifest_path.read_bytes()).hexdigest(), manifest.get("format", {}), reader)


def _on_the_fly(ckpt: Checkpoint, spec: FormatSpec) -> Source:
    fmt = spec.build()
    sel = spec.selection(ckpt)
    jobs, kept = plan_jobs(ckpt, fmt, sel)
    modules = {n.removesuffix(".weight"): (fmt, tuple(ckpt.tensors[n].shape)) for n, _ in jobs if n not in kept}
    order = [n if n in kept else n.removesuffix(".weight") for n, _ in jobs]
    qc = quant_config(fmt, kept, sel.include_lm_head)
    return Source(ckpt.folder, ckpt, ckpt.config, modules, list(kept), order, kept, qc, None, fmt.params())
