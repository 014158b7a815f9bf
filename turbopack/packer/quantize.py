"""`turbopack quantize`: a Hugging Face folder in, an arch-neutral quantized folder out.

Streaming: every output shape is known from the input header, so shards are planned and their
headers written first; each weight is then read in row chunks (safetensors lazy slices),
quantized chunk by chunk and written at its offset. Peak memory is a few chunks, not the model.
Output goes to a temp dir renamed at the end (see turbopack.checkpoint.output); with ``resume``
that temp dir is kept when the run fails, and a rerun skips the shards it finished
(turbopack.checkpoint.resume).
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turbopack.checkpoint import (Checkpoint, ShardedWriter, ShardPlan, TensorEntry, atomic_output, check_output,
                                  new_manifest, write_manifest)
from turbopack.checkpoint.manifest import tool_version
from turbopack.checkpoint.resume import Journal, source_fingerprint
from turbopack.checkpoint.sharded import DEFAULT_SHARD_BYTES
from turbopack.errors import TurbopackError
from turbopack.formats import Format, check_finite, get_format
from turbopack.packer.families import Selection, check_dims, family_of
from turbopack.packer.progress import byte_progress

SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
              "vocab.json", "merges.txt", "generation_config.json", "chat_template.jinja", "added_tokens.json")
CHUNK_BYTES = 64 << 20
QUANT_CONFIG_VERSION = 1


@dataclass
class QuantizeResult:
    out: Path
    format: str
    quantized: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)
    input_bytes: int = 0
    output_bytes: int = 0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    calibration: str | None = None  # what a calibrated run was calibrated on (its summary line)

    def as_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out), "format": self.format, "quantized": len(self.quantized),
            "kept": len(self.kept), "input_bytes": self.input_bytes, "output_bytes": self.output_bytes,
            "seconds": round(self.seconds, 3), "mb_per_s": round(self.input_bytes / 1e6 / max(self.seconds, 1e-9), 1),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            **({"calibration": self.calibration} if self.calibration else {}),
        }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def quantized_names(weight_name: str, fmt: Format, shape: tuple[int, int]) -> list[TensorEntry]:
    prefix = weight_name.removesuffix(".weight")
    return [TensorEntry(f"{prefix}.{s.suffix}", s.dtype, s.shape) for s in fmt.specs(shape)]


def plan_jobs(ckpt: Checkpoint, fmt: Format, sel: Selection) -> tuple[list[tuple[str, list[TensorEntry]]], dict[str, str]]:
    """[(source tensor, its output entries)] in file order, and {kept tensor: reason}. Validates
    every shape before anything is written, so a bad shape fails in seconds, not hours."""
    check_dims(ckpt.config, {n: e.shape for n, e in ckpt.tensors.items()}, str(ckpt.folder / "config.json"),
               {n: p.name for n, p in ckpt.location.items()})
    jobs, kept = [], {}
    for name, entry in ckpt.tensors.items():
        reason = sel.reason_skipped(name, len(entry.shape))
        if reason is None:
            fmt.check_shape(f"{ckpt.location[name].name}:{name}", entry.shape)
            jobs.append((name, quantized_names(name, fmt, entry.shape)))
        else:
            kept[name] = reason
            jobs.append((name, [entry]))
    return jobs, kept


def _quantize_one(ckpt: Checkpoint, name: str, fmt: Format, writer: ShardedWriter, advance) -> None:
    prefix = name.removesuffix(".weight")
    where = f"{ckpt.location[name].name}:{name}"
    stats = None
    if fmt.needs_tensor_stats:
        stats = fmt.tensor_stats(chunk for _, chunk in ckpt.iter_row_chunks(name, CHUNK_BYTES))
    specs = {s.suffix: s for s in fmt.specs(ckpt.tensors[name].shape)}
    for start, chunk in ckpt.iter_row_chunks(name, CHUNK_BYTES):
        check_finite(where, chunk)
        for suffix, t in fmt.quantize(chunk, stats).items():
            writer.write_rows(f"{prefix}.{suffix}", start if specs[suffix].per_row else 0, t)
        advance(chunk.numel() * chunk.element_size())


def _copy_one(ckpt: Checkpoint, name: str, writer: ShardedWriter, advance) -> None:
    for start, chunk in ckpt.iter_row_chunks(name, CHUNK_BYTES):
        writer.write_rows(name, start, chunk) if chunk.dim() else writer.write(name, chunk)
        advance(chunk.numel() * chunk.element_size())


def quantization_config(fmt: Format, result: QuantizeResult, sel: Selection) -> dict[str, Any]:
    return {"quant_method": "turbopack", "version": QUANT_CONFIG_VERSION, **fmt.params(), "method": "rtn",
            "packed": False, "ignore": sorted(result.kept), "lm_head": sel.include_lm_head}


def quantize(model: str | Path, out: str | Path, format: str = "w4a16", *, group_size: int | None = None,
             sym: bool | None = None, scale_dtype: str | None = None, per_tensor: bool | None = None,
             ignore: tuple[str, ...] = (), include_lm_head: bool = False, force: bool = False,
             max_shard_bytes: int = DEFAULT_SHARD_BYTES, progress: bool = True, method: str = "rtn",
             calib: str | Path | None = None, calib_samples: int | None = None, calib_seqlen: int | None = None,
             seed: int | None = None, smooth: bool = False, alpha: float | None = None, device: str | None = None,
             act_order: bool | None = None, resume: bool = False, static_groups: bool | None = None,
             damp: float | None = None, gptq_block_size: int | None = None) -> QuantizeResult:
    """Quantize every linear weight of MODEL with RTN into an arch-neutral folder OUT.

    ``method`` awq/gptq (or ``smooth``) calibrate on text instead, block by block, into the same
    folder format: see turbopack.packer.calibration. ``resume`` keeps the partial output of a
    failed run and continues it (RTN only)."""
    if resume and (method != "rtn" or smooth):
        raise TurbopackError("--resume works with RTN only; a calibrated quantize (--method awq/gptq, --smooth) "
                             "starts over each run: drop --resume")
    params = {"group_size": group_size, "sym": sym, "scale_dtype": scale_dtype, "per_tensor": per_tensor}
    calib_opts = {"calib": calib, "samples": calib_samples, "seq_len": calib_seqlen, "seed": seed, "alpha": alpha,
                  "device": device, "act_order": act_order, "static_groups": static_groups, "damp": damp,
                  "gptq_block_size": gptq_block_size}
    if method != "rtn" or smooth:
        from turbopack.packer.calibration import CalibOptions, quantize_calibrated

        opts = CalibOptions(method=method, smooth=smooth, **{k: v for k, v in calib_opts.items() if v is not None})
        return quantize_calibrated(model, out, format, params, opts, ignore=tuple(ignore), include_lm_head=include_lm_head,
                                   force=force, max_shard_bytes=max_shard_bytes, progress=progress)
    unused = [k for k, v in calib_opts.items() if v is not None]
    if unused:
        flag = "--" + {"samples": "calib-samples", "seq_len": "calib-seqlen"}.get(unused[0], unused[0]).replace("_", "-")
        raise TurbopackError(f"{flag} is a calibration option and RTN uses none; add --method awq|gptq (or --smooth) or drop it")
    out = Path(out)
    t0 = time.perf_counter()
    ckpt = Checkpoint.open(model)
    check_output(out, force, inputs=(ckpt.folder,))
    fmt = get_format(format, **{k: v for k, v in params.items() if k in _fields(format)})
    sel = Selection(family_of(ckpt.config, str(ckpt.folder / "config.json")), include_lm_head, tuple(ignore))
    jobs, kept = plan_jobs(ckpt, fmt, sel)
    result = QuantizeResult(out=out, format=fmt.describe(), kept=kept)
    result.input_bytes = sum(ckpt.tensors[n].nbytes for n, _ in jobs)
    plan = ShardPlan.build([entries for _, entries in jobs], max_shard_bytes)
    meta = {"format": fmt.name.value, "turbopack": json.dumps(fmt.params())}
    job = {"command": "quantize", "source": source_fingerprint(ckpt.folder, list(ckpt.location.values())),
           "format": fmt.params(), "method": "rtn", "ignore": sorted(sel.ignore), "lm_head": include_lm_head,
           "max_shard_bytes": max_shard_bytes, "turbopack": tool_version()}
    with atomic_output(out, force, resume) as tmp:
        journal = Journal.open(tmp, job) if resume else None  # another job's partial output: refused here
        with byte_progress(f"quantize {fmt.name.value}", result.input_bytes, progress) as (bar, task):
            writer = ShardedWriter(tmp, plan, meta, journal)
            _write_jobs(ckpt, fmt, jobs, writer, result, bar, task)
            shards = writer.finish()
        _write_side_files(ckpt, tmp, fmt, result, sel, shards, jobs)
    result.output_bytes = sum(s["bytes"] for s in shards.values())
    result.seconds = time.perf_counter() - t0
    result.peak_rss_mb = peak_rss_mb()
    return result


def _write_jobs(ckpt: Checkpoint, fmt: Format, jobs, writer: ShardedWriter, result: QuantizeResult, bar, task) -> None:
    advance = lambda n: bar.advance(task, n)  # noqa: E731
    for name, entries in jobs:
        if name not in result.kept:
            result.quantized.append(name)
        if writer.skips(entries[0].name):  # its shard was finished by an earlier (resumed) run
            advance(ckpt.tensors[name].nbytes)
            continue
        bar.update(task, description=name[-40:])
        if name in result.kept:
            _copy_one(ckpt, name, writer, advance)
        else:
            _quantize_one(ckpt, name, fmt, writer, advance)
        writer.close_if_complete()


def _fields(format: str) -> set[str]:
    from dataclasses import fields

    from turbopack.formats import FORMATS

    return {f.name for f in fields(FORMATS.get(format))}


def _write_side_files(ckpt, tmp: Path, fmt: Format, result: QuantizeResult, sel: Selection, shards, jobs) -> None:
    config = dict(ckpt.config)
    config["quantization_config"] = quantization_config(fmt, result, sel)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for side in SIDE_FILES:
        if (ckpt.folder / side).is_file():
            shutil.copy2(ckpt.folder / side, tmp / side)
    tensors = {
        name.removesuffix(".weight"): {"shape": list(ckpt.tensors[name].shape), "format": fmt.params(),
                                       "tensors": [e.name for e in entries], "method": "rtn"}
        for name, entries in jobs if name not in result.kept
    }
    manifest = new_manifest("quantized", str(ckpt.folder), format=fmt.params(), tensors=tensors,
                            unquantized=result.kept, shards=shards)
    write_manifest(tmp, manifest)
