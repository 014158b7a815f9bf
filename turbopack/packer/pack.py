"""`turbopack pack`: an arch-neutral quantized folder in, one packed folder per GPU arch (and TP rank) out.

For each quantized module a layout is selected for (format, arch, shape), the arch-neutral tensors
are split per TP rank (turbopack.packer.tp) and each slice is packed by the layout's pure
functions into tensors named ``<module>.<suffix>``. Every output shape is known from the layouts'
``packed_specs``, so everything (arch names, format support, TP divisibility, shapes) is planned
and validated before a byte is written; then one pass reads the source module by module and writes
every output folder's shards. Peak memory is one module, not the model. Output is atomic; with
``resume`` a failed run's partial output is kept and a rerun skips the shards it finished.

The packed folder is a cache of pure functions of the arch-neutral checkpoint: the runtime calls
:func:`pack_module` itself when no folder for its (arch, tp, layout versions) exists.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from turbopack.checkpoint import ShardedWriter, ShardPlan, TensorEntry, atomic_output, check_output, new_manifest
from turbopack.checkpoint.manifest import tool_version
from turbopack.checkpoint.resume import Journal
from turbopack.checkpoint.sharded import DEFAULT_SHARD_BYTES
from turbopack.errors import TurbopackError
from turbopack.formats import Format, dtype_name
from turbopack.inference.kernels.table import buckets_to_json
from turbopack.inference.kernels.table import plan as kernel_plan
from turbopack.layouts import ARCHS, get_arch
from turbopack.layouts.archs import resolve_arch
from turbopack.layouts.packing import layout_of, pack_module, select_layout
from turbopack.layouts.selection import select
from turbopack.packer import tp as tpmod
from turbopack.packer.folder import CHUNK_BYTES, write_folder
from turbopack.packer.options import FormatSpec, OutputOptions
from turbopack.packer.pack_source import Source, open_source
from turbopack.packer.progress import byte_progress

PACKED_KIND = "packed"


# --- planning --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One output folder: ``rel`` is its path under OUT ("." for a single arch and tp=1)."""

    arch: str
    rank: int
    rel: str


@dataclass
class Plan:
    targets: list[Target]
    slices: dict[str, list[tpmod.Slice]]  # module -> per-rank slice
    choices: dict[tuple[str, Target], Any]  # (module, target) -> Choice
    plain_shapes: dict[str, list[tuple[int, ...]]]  # plain tensor -> per-rank shape
    entries: dict[Target, list[list[TensorEntry]]] = field(default_factory=dict)  # jobs per target


def targets_for(archs: list[str], tp: int) -> list[Target]:
    out = []
    for arch in archs:
        for rank in range(tp):
            parts = ([arch] if len(archs) > 1 else []) + ([tpmod.rank_dir(rank)] if tp > 1 else [])
            out.append(Target(arch, rank, "/".join(parts) or "."))
    return out


def check_archs(arch: str | tuple[str, ...] | list[str]) -> list[str]:
    """Canonical arch names ("auto": this machine's GPU); unknown names raise, listing the known."""
    names = [arch] if isinstance(arch, str) else list(arch)
    if not names:
        raise TurbopackError("no --arch given; pass e.g. --arch sm90")
    return list(dict.fromkeys(resolve_arch(n).name.value for n in names))


def plan(src: Source, archs: list[str], tp: int) -> Plan:
    """Select every layout and size every output tensor; raises on any bad input, writes nothing."""
    if tp < 1:
        raise TurbopackError(f"--tp {tp}: must be at least 1")
    p = Plan(targets_for(archs, tp), {}, {}, {})
    for t in p.targets:
        p.entries[t] = []
    for name in src.order:
        if name in src.modules:
            _plan_module(src, p, name, tp)
        else:
            entry = src.ckpt.tensors[name]
            shapes = tpmod.plain_shapes(name, entry.shape, tp, src.config)
            p.plain_shapes[name] = shapes
            for t in p.targets:
                p.entries[t].append([TensorEntry(name, entry.dtype, shapes[t.rank])])
    return p


def _plan_module(src: Source, p: Plan, name: str, tp: int) -> None:
    fmt, full = src.modules[name]
    slices = tpmod.plan_slices(name, full, tp, src.config)
    for sl in slices:
        tpmod.check_group(name, fmt, sl, full)
    p.slices[name] = slices
    for t in p.targets:
        shape = slices[t.rank].shape(full)
        choice = select_layout(fmt, t.arch, shape, name)
        p.choices[(name, t)] = choice
        specs = layout_of(choice).packed_specs(fmt, shape)
        p.entries[t].append([TensorEntry(f"{name}.{s.suffix}", s.dtype, s.shape) for s in specs])


# --- writing ---------------------------------------------------------------------------------------


@dataclass
class PackResult:
    out: Path
    archs: list[str]
    tp: int
    folders: list[Path] = field(default_factory=list)
    modules: int = 0
    plain: int = 0
    explain: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what runs differently than asked (e.g. fp8 upcast)
    input_bytes: int = 0
    output_bytes: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        d = {"out": str(self.out), "archs": self.archs, "tp": self.tp, "folders": [str(f) for f in self.folders],
             "modules": self.modules, "plain": self.plain, "input_bytes": self.input_bytes,
             "output_bytes": self.output_bytes, "seconds": round(self.seconds, 3)}
        if self.notes:
            d["notes"] = self.notes
        if self.explain:
            d["explain"] = self.explain
        return d


def not_native(src: Source, p: Plan) -> list[str]:
    """One line per (format, arch) whose layout does not run the format natively: its weights
    are upcast to 16-bit in the kernel and its activations stay 16-bit (``Layout.weights_only``)."""
    notes: dict[tuple[str, str], str] = {}
    for (name, t), c in p.choices.items():
        fmt, shape = src.modules[name]
        if not layout_of(c).weights_only or (fmt.describe(), t.arch) in notes:
            continue
        native = []
        for a in ARCHS:
            try:
                native += [] if layout_of(select(fmt, a, shape)).weights_only else [a]
            except TurbopackError:
                pass
        notes[(fmt.describe(), t.arch)] = (
            f"{fmt.describe()} on {get_arch(t.arch).label}: no native {fmt.name.value} tensor cores, so its weights "
            f"will be upcast to 16-bit in the kernel and activations stay 16-bit (layout {layout_of(c).name.value}); "
            f"native on {', '.join(native) or 'no arch'}")
    return list(notes.values())


def _kernel_json(arch: str, layout: str, shape: tuple[int, int], fmt: Format) -> dict[str, dict]:
    """What dispatch will run per M bucket, as the manifest and --explain write it."""
    return buckets_to_json(kernel_plan(arch, layout, *shape, getattr(fmt, "group_size", None)))


def explain_rows(src: Source, p: Plan) -> list[dict]:
    rows = []
    for name in src.order:
        if name not in src.modules:
            continue
        fmt = src.modules[name][0]
        for t in p.targets:
            c = p.choices[(name, t)]
            shape = p.slices[name][t.rank].shape(src.modules[name][1])
            kernel = _kernel_json(t.arch, layout_of(c).name.value, shape, fmt)
            rows.append({"module": name, "arch": t.arch, "rank": t.rank, "shape": list(shape),
                         "format": fmt.describe(), "layout": layout_of(c).name.value, "padding": c.padding.as_dict(),
                         "kernel": kernel, "why": str(c.why)})
    return rows


def pack(src: str | Path, out: str | Path, arch: str | tuple[str, ...] | list[str] = ("sm90",), tp: int = 1,
         format: str | None = None, *, group_size: int | None = None, sym: bool | None = None,
         scale_dtype: str | None = None, per_tensor: bool | None = None, ignore: tuple[str, ...] = (),
         include_lm_head: bool = False, explain: bool = False, force: bool = False,
         max_shard_bytes: int = DEFAULT_SHARD_BYTES, chunk_bytes: int = CHUNK_BYTES,
         progress: bool = True, strict: bool = False, resume: bool = False) -> PackResult:
    """Pack the quantized folder SRC (or an HF folder, quantized on the fly with ``format``) into OUT:
    OUT itself for one arch, OUT/<arch> for several; OUT[/<arch>]/rank<r> per rank when tp > 1.

    A format an arch cannot run natively (fp8 on sm80/86) is packed to run upcast, noted in
    ``result.notes``; ``strict`` refuses it instead. ``resume`` keeps the partial output of a
    failed run and continues it."""
    spec = None if format is None else FormatSpec(format, group_size, sym, scale_dtype, per_tensor, tuple(ignore),
                                                  include_lm_head)
    return pack_folder(src, out, check_archs(arch), tp, spec, OutputOptions(force, max_shard_bytes, progress, resume),
                       explain=explain, chunk_bytes=chunk_bytes, strict=strict)


def pack_folder(src: str | Path, out: str | Path, archs: list[str], tp: int, spec: FormatSpec | None,
                output: OutputOptions, *, explain: bool = False, chunk_bytes: int = CHUNK_BYTES,
                strict: bool = False) -> PackResult:
    """:func:`pack` with its options resolved: ``archs`` canonical, ``spec`` None for a quantized SRC."""
    t0, out = time.perf_counter(), Path(out)
    source = open_source(src, spec)
    check_output(out, output.force, inputs=(source.folder,))
    p = plan(source, archs, tp)
    result = PackResult(out, archs, tp, [out / t.rel if t.rel != "." else out for t in p.targets],
                        len(source.modules), len(source.plain))
    result.notes = not_native(source, p)
    if strict and result.notes:
        raise TurbopackError(f"--strict: {result.notes[0]}; pack for a native arch or drop --strict")
    if explain:
        result.explain = explain_rows(source, p)
    result.input_bytes = (sum(source.module_bytes(m) for m in source.modules)
                          + sum(source.ckpt.tensors[n].nbytes for n in source.plain))
    job = {"command": "pack", "source": source.fingerprint(), "archs": archs, "tp": tp,
           "max_shard_bytes": output.max_shard_bytes, "turbopack": tool_version()}
    with atomic_output(out, output.force, output.resume) as tmp:
        journal = Journal.open(tmp, job) if output.resume else None  # another job's partial output: refused here
        with byte_progress(f"pack {','.join(archs)}", result.input_bytes, output.progress) as (bar, task):
            writers = _open_writers(tmp, source, p, output.max_shard_bytes, journal)
            _write_all(source, p, writers, chunk_bytes, bar, task)
        for t, w in writers.items():
            shards = w.finish()
            result.output_bytes += sum(s["bytes"] for s in shards.values())
            _finish_folder(source, p, t, w.folder, shards)
    result.seconds = time.perf_counter() - t0
    return result


def _layout_versions(src: Source, p: Plan, t: Target) -> dict[str, int]:
    return {layout_of(c).name.value: layout_of(c).version for (m, tt), c in p.choices.items() if tt == t}


def _open_writers(tmp: Path, src: Source, p: Plan, max_shard_bytes: int,
                  journal: Journal | None) -> dict[Target, ShardedWriter]:
    writers = {}
    formats = sorted({f.name.value for f, _ in src.modules.values()})
    for t in p.targets:
        folder = tmp / t.rel
        folder.mkdir(parents=True, exist_ok=True)
        layouts = json.dumps(_layout_versions(src, p, t), sort_keys=True)
        meta = {"format": ",".join(formats), "arch": t.arch, "layouts": layouts,
                "turbopack_version": tool_version(), "tp": str(_tp(p)), "rank": str(t.rank),
                "turbopack": json.dumps(src.format_params)}
        writers[t] = ShardedWriter(folder, ShardPlan.build(p.entries[t], max_shard_bytes), meta, journal)
    return writers


def _write_all(src: Source, p: Plan, writers: dict[Target, ShardedWriter], chunk_bytes: int, bar, task) -> None:
    """Every job in source order, to the targets whose shard of it is not finished yet (resume):
    a job finished for every target is not read at all."""
    for i, name in enumerate(src.order):
        todo = {t: w for t, w in writers.items() if not w.skips(p.entries[t][i][0].name)}
        if todo:
            bar.update(task, description=name[-40:])
            _write_job(src, p, name, todo, chunk_bytes)
            for w in todo.values():
                w.close_if_complete()
        bar.advance(task, src.module_bytes(name) if name in src.modules else src.ckpt.tensors[name].nbytes)


def _write_job(src: Source, p: Plan, name: str, writers: dict[Target, ShardedWriter], chunk_bytes: int) -> None:
    if name not in src.modules:
        _copy_plain(src, name, writers, chunk_bytes, _tp(p))
        return
    fmt, full = src.modules[name]
    if src.module_bytes(name) <= chunk_bytes:  # the usual case: read once, pack for every target
        q = src.module(name)
        for t, w in writers.items():
            sl = p.slices[name][t.rank]
            qs = tpmod.split_quantized(name, fmt, q, full, sl)
            pm = pack_module(fmt, qs, sl.shape(full), t.arch, name=name, choice=p.choices[(name, t)])
            for suffix, tensor in pm.tensors.items():
                w.write(f"{name}.{suffix}", tensor)
        return
    for t, w in writers.items():  # a huge module: whole N tiles at a time, per target
        _pack_chunked(src, name, p.slices[name][t.rank], layout_of(p.choices[(name, t)]), w, chunk_bytes)


def _pack_chunked(src: Source, name: str, sl: tpmod.Slice, layout: Any, w: ShardedWriter, chunk_bytes: int) -> None:
    fmt, full = src.modules[name]
    shape = sl.shape(full)
    rows = max(1, chunk_bytes * full[0] // max(1, src.module_bytes(name)))
    specs = {s.suffix: s for s in layout.packed_specs(fmt, shape)}
    n_pad = layout.padding(shape).n_pad
    for r0, r1 in layout.row_chunks(shape, rows):
        q = _slice_rows(src, name, sl, r0, r1)
        if sl.parallel is tpmod.Parallel.ROW:
            q = tpmod.split_quantized(name, fmt, q, (r1 - r0, full[1]), sl)
        for suffix, tensor in layout.pack(fmt, q, shape).items():
            if specs[suffix].per_row:  # dim 0 counts N tiles (or padded rows): r0 is a whole tile
                w.write_rows(f"{name}.{suffix}", r0 * specs[suffix].shape[0] // n_pad, tensor)
            elif r0 == 0:
                w.write(f"{name}.{suffix}", tensor)


def _slice_rows(src: Source, name: str, sl: tpmod.Slice, r0: int, r1: int) -> dict[str, torch.Tensor]:
    """Rows [r0, r1) of this rank's part of a module (a fused linear's chunk may span two pieces)."""
    if sl.parallel is not tpmod.Parallel.COLUMN:
        return src.module_rows(name, r0, r1)
    fmt, full = src.modules[name]
    parts = [src.module_rows(name, a, b) for a, b in sl.source_ranges(r0, r1)]
    if len(parts) == 1:
        return parts[0]
    return {s.suffix: torch.cat([p[s.suffix] for p in parts]) if s.per_row else parts[0][s.suffix]
            for s in fmt.specs(full)}


def _copy_plain(src: Source, name: str, writers: dict[Target, ShardedWriter], chunk_bytes: int, tp: int) -> None:
    """Row chunks of an unquantized tensor to every target, split for TP like its linear."""
    for start, chunk in src.ckpt.iter_row_chunks(name, chunk_bytes):
        full = src.ckpt.tensors[name].shape
        for rank, offset, part in tpmod.split_plain_rows(name, start, chunk, tp, src.config, full):
            for t, w in writers.items():
                if t.rank == rank:
                    w.write_rows(name, offset, part) if part.dim() else w.write(name, part)


def _tp(p: Plan) -> int:
    return len({t.rank for t in p.targets})


def _finish_folder(src: Source, p: Plan, t: Target, folder: Path, shards: dict[str, dict]) -> None:
    tp = _tp(p)
    modules = [m for m in src.order if m in src.modules]
    layouts = {m: layout_of(p.choices[(m, t)]).name.value for m in modules}
    qcfg = {**src.quant_config, "packed": True, "arch": t.arch, "layout_version": _layout_versions(src, p, t),
            "layouts": layouts, "tp": tp, "tp_rank": t.rank}
    tensors = {}
    for m in modules:
        fmt, full = src.modules[m]
        sl, c = p.slices[m][t.rank], p.choices[(m, t)]
        shape = sl.shape(full)
        tensors[m] = {"shape": list(shape), "full_shape": list(full), "format": fmt.params(),
                      "layout": layout_of(c).name.value, "layout_version": layout_of(c).version,
                      "padding": c.padding.as_dict(),
                      "kernel": _kernel_json(t.arch, layout_of(c).name.value, shape, fmt),
                      "why": c.why,
                      "tensors": [f"{m}.{s.suffix}" for s in layout_of(c).packed_specs(fmt, shape)], "tp": sl.as_dict()}
    plain = {n: {"shape": list(p.plain_shapes[n][t.rank]), "dtype": dtype_name(src.ckpt.tensors[n].dtype),
                 "full_shape": list(src.ckpt.tensors[n].shape)} for n in src.plain}
    manifest = new_manifest(PACKED_KIND, str(src.folder), source_manifest_sha256=src.manifest_sha256,
                            arch=t.arch, tp=tp, rank=t.rank, format=src.format_params, tensors=tensors,
                            plain=plain, unquantized=src.unquantized, shards=shards)
    write_folder(folder, src.folder, src.config, qcfg, manifest)
