"""`turbopack convert`: a foreign quantized checkpoint (AWQ gemm, GPTQ, compressed-tensors) in,
our arch-neutral quantized folder out, bit-exact.

The source's quantization config (config.json ``quantization_config``, or AutoGPTQ's
quantize_config.json / AutoAWQ's quant_config.json beside it) picks the importer. Everything is
planned from headers first (every output shape is known), then each quantized module is read,
converted and written at its place in the planned shards; other tensors are copied as they are.
The output is what `turbopack quantize` writes (config.json quantization_config, turbopack.json
manifest), so `turbopack pack` takes it like our own. Output is atomic.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turbopack.checkpoint import (
    Checkpoint,
    ShardedWriter,
    ShardPlan,
    TensorEntry,
    atomic_output,
    check_output,
    new_manifest,
    read_json,
)
from turbopack.checkpoint.sharded import DEFAULT_SHARD_BYTES
from turbopack.formats import Format
from turbopack.packer.folder import copy_tensor, quant_config, write_folder
from turbopack.packer.interop.awq import AWQImporter
from turbopack.packer.interop.base import ConvertError, Importer, ModuleJob
from turbopack.packer.interop.compressed_tensors import CompressedTensorsImporter
from turbopack.packer.interop.gptq import GPTQImporter
from turbopack.packer.progress import byte_progress
from turbopack.registry import Registry

IMPORTERS: Registry[type[Importer]] = Registry("quantized checkpoint format")
for _cls in (AWQImporter, GPTQImporter, CompressedTensorsImporter):
    for _m in _cls.quant_methods:
        IMPORTERS.register(_m, _cls)

#: where older tools put their quantization config, when config.json has none
SIDE_CONFIGS = {"quantize_config.json": "gptq", "quant_config.json": "awq"}


@dataclass
class ConvertResult:
    out: Path
    source_method: str
    format: str
    quantized: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    output_bytes: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "from": self.source_method,
            "format": self.format,
            "quantized": len(self.quantized),
            "kept": len(self.kept),
            "dropped": sorted(self.dropped),
            "output_bytes": self.output_bytes,
            "seconds": round(self.seconds, 3),
        }


def source_quant_config(ckpt: Checkpoint) -> tuple[dict[str, Any], str]:
    """(the source's quantization config, the file it came from)."""
    where = str(ckpt.folder / "config.json")
    qcfg = ckpt.config.get("quantization_config")
    if isinstance(qcfg, dict) and qcfg.get("quant_method") == "turbopack":
        raise ConvertError(f"{where}: already a turbopack folder; `turbopack pack` takes it directly")
    if isinstance(qcfg, dict) and qcfg:
        return qcfg, where
    for name, method in SIDE_CONFIGS.items():
        if (ckpt.folder / name).is_file():
            side = read_json(ckpt.folder / name)
            return {"quant_method": method, **side}, str(ckpt.folder / name)
    raise ConvertError(f"{where}: no quantization_config; this model is not quantized (use `turbopack quantize` on it)")


def open_importer(ckpt: Checkpoint) -> Importer:
    qcfg, where = source_quant_config(ckpt)
    method = str(qcfg.get("quant_method", "")).lower()
    try:
        cls = IMPORTERS.get(method)
    except KeyError as e:
        raise ConvertError(f"{where}: {e}") from None
    return cls(ckpt, qcfg, where)


def _plan(ckpt: Checkpoint, fmt: Format, jobs: list[ModuleJob]):
    """[(name, entries, job or None)] in source order, and {kept tensor: reason}."""
    by_first = {job.sources[0]: job for job in jobs}
    consumed = {s for job in jobs for s in job.sources}
    order, kept = [], {}
    for name, entry in ckpt.tensors.items():
        if name in by_first:
            job = by_first[name]
            fmt.check_shape(f"{job.module}", job.shape)
            entries = [TensorEntry(f"{job.module}.{s.suffix}", s.dtype, s.shape) for s in fmt.specs(job.shape)]
            order.append((name, entries, job))
        elif name not in consumed:
            if name.endswith(".weight") and len(entry.shape) == 2:
                kept[name] = "not quantized in the source checkpoint"
            order.append((name, [entry], None))
    return order, kept


def convert(src: str | Path, out: str | Path, *, force: bool = False, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
            progress: bool = True) -> ConvertResult:
    """Import the quantized checkpoint SRC (folder or Hub id) into our arch-neutral folder OUT."""
    t0 = time.perf_counter()
    out = Path(out)
    ckpt = Checkpoint.open(src)
    check_output(out, force, inputs=(ckpt.folder,))
    imp = open_importer(ckpt)
    fmt, jobs = imp.plan()
    order, kept = _plan(ckpt, fmt, jobs)
    result = ConvertResult(out, imp.method, fmt.describe(), kept=kept, dropped=imp.dropped(jobs))
    plan = ShardPlan.build([entries for _, entries, _ in order], max_shard_bytes)
    total = sum(ckpt.tensors[s].nbytes for name, _, job in order for s in (job.sources if job else (name,)))
    meta = {"format": fmt.name.value, "turbopack": json.dumps(fmt.params())}
    with atomic_output(out, force) as tmp, byte_progress(f"convert {imp.method}", total, progress) as (bar, task):
        writer = ShardedWriter(tmp, plan, meta)
        for name, entries, job in order:
            bar.update(task, description=name[-40:])
            if job is None:
                copy_tensor(ckpt, name, writer)
                bar.advance(task, ckpt.tensors[name].nbytes)
                continue
            tensors = imp.convert(job, fmt)
            for e in entries:
                writer.write(e.name, tensors[e.name.rpartition(".")[2]])
            result.quantized.append(job.module)
            bar.advance(task, sum(ckpt.tensors[s].nbytes for s in job.sources))
        shards = writer.finish()
        _finish_folder(ckpt, tmp, imp, fmt, result, jobs, shards)
    result.output_bytes = sum(s["bytes"] for s in shards.values())
    result.seconds = time.perf_counter() - t0
    return result


def _finish_folder(ckpt: Checkpoint, tmp: Path, imp: Importer, fmt: Format, result: ConvertResult,
                   jobs: list[ModuleJob], shards: dict) -> None:
    source_cfg = {k: v for k, v in imp.qcfg.items() if isinstance(v, (str, int, float, bool)) or v is None}
    qcfg = quant_config(fmt, result.kept, any(j.module == "lm_head" for j in jobs), imp.method,
                        imported_from=source_cfg)
    tensors = {job.module: {"shape": list(job.shape), "format": fmt.params(), "method": imp.method,
                            "tensors": [f"{job.module}.{s.suffix}" for s in fmt.specs(job.shape)]} for job in jobs}
    manifest = new_manifest("quantized", str(ckpt.folder), format=fmt.params(), tensors=tensors,
                            unquantized=result.kept, shards=shards, imported_from=source_cfg, dropped=result.dropped)
    write_folder(tmp, ckpt.folder, ckpt.config, qcfg, manifest)
