"""RTN quantization, streaming: a Hugging Face folder in, an arch-neutral quantized folder out.

Every output shape is known from the input header, so shards are planned and their headers
written first; each weight is then read in row chunks (safetensors lazy slices), quantized chunk by
chunk and written at its offset. Peak memory is a few chunks, not the model. Output goes to a temp
dir renamed at the end (see turbopack.checkpoint.output); with ``resume`` that temp dir is kept
when the run fails, and a rerun skips the shards it finished (turbopack.checkpoint.resume).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from turbopack.checkpoint import Checkpoint, ShardedWriter, ShardPlan, atomic_output, check_output, new_manifest
from turbopack.checkpoint.manifest import tool_version
from turbopack.checkpoint.resume import Journal, source_fingerprint
from turbopack.formats import Format
from turbopack.packer.families import Selection
from turbopack.packer.folder import copy_tensor, quant_config, quantize_tensor, write_folder
from turbopack.packer.jobs import Jobs, QuantizeResult, peak_rss_mb, plan_jobs
from turbopack.packer.options import FormatSpec, OutputOptions
from turbopack.packer.progress import byte_progress
from turbopack.packer.ragged_k import fallback_formats


def quantize_rtn(model: str | Path, out: str | Path, spec: FormatSpec, output: OutputOptions) -> QuantizeResult:
    """Quantize every selected linear weight of MODEL with RTN into OUT."""
    out = Path(out)
    t0 = time.perf_counter()
    ckpt = Checkpoint.open(model)
    check_output(out, output.force, inputs=(ckpt.folder,))
    fmt = spec.build()
    sel = spec.selection(ckpt)
    formats = fallback_formats(ckpt, fmt, sel, spec.k_fallback)
    jobs, kept = plan_jobs(ckpt, fmt, sel, formats)
    result = QuantizeResult(out=out, format=fmt.describe(), kept=kept, formats=formats, note=ckpt.note)
    result.input_bytes = sum(ckpt.tensors[n].nbytes for n, _ in jobs)
    plan = ShardPlan.build([entries for _, entries in jobs], output.max_shard_bytes)
    meta = {"format": fmt.name.value, "turbopack": json.dumps(fmt.params())}
    job = {"command": "quantize", "source": source_fingerprint(ckpt.folder, list(ckpt.location.values())),
           "format": fmt.params(), "method": "rtn", "ignore": sorted(sel.ignore), "lm_head": spec.include_lm_head,
           "max_shard_bytes": output.max_shard_bytes, "turbopack": tool_version(),
           **({"k_fallback": {n: f.params() for n, f in sorted(formats.items())}} if formats else {})}
    with atomic_output(out, output.force, output.resume) as tmp:
        journal = Journal.open(tmp, job) if output.resume else None  # another job's partial output: refused here
        with byte_progress(f"quantize {fmt.name.value}", result.input_bytes, output.progress) as (bar, task):
            writer = ShardedWriter(tmp, plan, meta, journal)
            _write_jobs(ckpt, fmt, jobs, writer, result, bar, task)
            shards = writer.finish()
        _finish_folder(ckpt, tmp, fmt, result, sel, shards, jobs)
    result.output_bytes = sum(s["bytes"] for s in shards.values())
    result.seconds = time.perf_counter() - t0
    result.peak_rss_mb = peak_rss_mb()
    return result


def _write_jobs(ckpt: Checkpoint, fmt: Format, jobs: Jobs, writer: ShardedWriter, result: QuantizeResult, bar,
                task) -> None:
    advance = lambda n: bar.advance(task, n)  # noqa: E731
    for name, entries in jobs:
        if name not in result.kept:
            result.quantized.append(name)
        if writer.skips(entries[0].name):  # its shard was finished by an earlier (resumed) run
            advance(ckpt.tensors[name].nbytes)
            continue
        bar.update(task, description=name[-40:])
        if name in result.kept:
            copy_tensor(ckpt, name, writer, advance)
        else:
            quantize_tensor(ckpt, name, result.formats.get(name, fmt), writer, advance)
        writer.close_if_complete()


def _finish_folder(ckpt: Checkpoint, tmp: Path, fmt: Format, result: QuantizeResult, sel: Selection, shards,
                   jobs: Jobs) -> None:
    tensors = {
        name.removesuffix(".weight"): {"shape": list(ckpt.tensors[name].shape),
                                       "format": result.formats.get(name, fmt).params(),
                                       "tensors": [e.name for e in entries], "method": "rtn"}
        for name, entries in jobs if name not in result.kept
    }
    manifest = new_manifest("quantized", str(ckpt.folder), format=fmt.params(), tensors=tensors,
                            unquantized=result.kept, shards=shards)
    write_folder(tmp, ckpt.folder, ckpt.config, quant_config(fmt, result.kept, sel.include_lm_head), manifest)
