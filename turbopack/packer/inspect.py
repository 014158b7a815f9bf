"""`turbopack inspect`: what a folder holds, for an original HF model, a quantized or a packed folder.

Reads headers and manifests only (no tensor data), so it is instant on any size of model. The
compression ratio compares the folder's bytes with the same parameters stored as bf16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from turbopack.checkpoint import MANIFEST_NAME, Checkpoint, read_manifest
from turbopack.errors import CheckpointError, TurbopackError
from turbopack.formats import dtype_name, format_from_params


@dataclass
class InspectReport:
    folder: Path
    kind: str  # "hf" | "quantized" | "packed"
    arch: str | None = None
    tp: int = 1
    rank: int = 0
    formats: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    total_bytes: int = 0
    bf16_bytes: int = 0
    note: str | None = None  # what the folder's view leaves out (a multimodal model's vision tower)

    @property
    def ratio(self) -> float:
        return self.bf16_bytes / self.total_bytes if self.total_bytes else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "kind": self.kind, "arch": self.arch, "tp": self.tp, "rank": self.rank,
                "formats": self.formats, "total_bytes": self.total_bytes, "bf16_bytes": self.bf16_bytes,
                "compression_vs_bf16": round(self.ratio, 3), "tensors": self.rows,
                **({"note": self.note} if self.note else {})}


def _bf16_bytes(entry) -> int:
    return math.prod(entry.shape) * 2 if entry.dtype.is_floating_point else entry.nbytes


def inspect(path: str | Path) -> list[InspectReport]:
    """One report per folder: PATH itself, or each <arch>/ and rank<r>/ folder of a pack output."""
    path = Path(path)
    if (path / MANIFEST_NAME).is_file() or (path / "config.json").is_file():
        return [inspect_folder(path)]
    return [inspect_folder(f) for f in packed_folders(path)]


def packed_folders(path: str | Path) -> list[Path]:
    """The packed folders under PATH: itself, or its <arch>/ and rank<r>/ subfolders (sorted)."""
    path = Path(path)
    if (path / MANIFEST_NAME).is_file():
        return [path]
    found = []
    for sub in sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []:
        found += [sub] if (sub / MANIFEST_NAME).is_file() else \
            [s for s in sorted(sub.iterdir()) if s.is_dir() and (s / MANIFEST_NAME).is_file()]
    if not found:
        raise CheckpointError(
            f"{path}: no {MANIFEST_NAME} here or in its arch/rank subfolders; point at a `turbopack pack` output"
        )
    return found


def inspect_folder(folder: Path) -> InspectReport:
    ckpt = Checkpoint.open(folder)
    manifest = read_manifest(ckpt.folder) if (ckpt.folder / MANIFEST_NAME).is_file() else None
    qc = ckpt.config.get("quantization_config")
    if isinstance(qc, dict) and qc.get("quant_method") == "compressed-tensors":
        return _compressed_tensors(ckpt, qc)
    if manifest is None:
        return _hf(ckpt)
    rep = InspectReport(
        ckpt.folder, manifest["kind"], manifest.get("arch"), manifest.get("tp", 1), manifest.get("rank", 0)
    )
    owned: set[str] = set()
    formats: dict[str, None] = {}
    for module, info in manifest["tensors"].items():
        fmt = format_from_params(info["format"])
        formats[fmt.describe()] = None
        names = info["tensors"]
        owned.update(names)
        nbytes = sum(ckpt.tensors[n].nbytes for n in names if n in ckpt.tensors)
        n, k = info["shape"]
        layout = f"{info['layout']} v{info['layout_version']}" if "layout" in info else "-"
        rep.rows.append({"name": module, "shape": list(info["shape"]), "dtype": fmt.describe(), "layout": layout,
                         "bytes": nbytes})
        rep.bf16_bytes += n * k * 2
    for name, entry in ckpt.tensors.items():
        if name not in owned:
            rep.rows.append({"name": name, "shape": list(entry.shape), "dtype": dtype_name(entry.dtype), "layout": "-",
                             "bytes": entry.nbytes})
            rep.bf16_bytes += _bf16_bytes(entry)
    rep.formats = list(formats)
    rep.total_bytes = sum(e.nbytes for e in ckpt.tensors.values())
    return rep


#: compressed-tensors tensor suffixes that make up one quantized linear (the rest: plain tensors)
_CT_PARTS = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx", "input_scale",
             "weight_global_scale", "input_global_scale")
#: how compressed-tensors names a weight strategy with a scale per group of K
_CT_GROUPED = {"group": "group {g}", "tensor_group": "group {g} + global scale"}


def _ct_scheme(qc: dict) -> tuple[str, int]:
    """(a one-line description of the weight scheme, bits per weight code) of the first config group."""
    group = next(iter((qc.get("config_groups") or {}).values()), {}) or {}
    w = group.get("weights") or {}
    bits = int(w.get("num_bits") or 8)
    grouped = _CT_GROUPED.get(w.get("strategy"))
    detail = grouped.format(g=w.get("group_size")) if grouped else str(w.get("strategy"))
    acts = group.get("input_activations")
    act = f", {acts.get('type')}{acts.get('num_bits')} activations per {acts.get('strategy')}" if acts else ""
    sym = "" if w.get("symmetric", True) else " asym"
    return f"compressed-tensors {qc.get('format')}: {w.get('type')}{bits} {detail}{sym}{act}", bits


def _compressed_tensors(ckpt: Checkpoint, qc: dict) -> InspectReport:
    """A compressed-tensors folder (our export or another tool's): modules from the header names,
    each linear's [N, K] from its weight (a packed element holds its bit width / bits of K: 32/bits
    for int32, 2 for NVFP4's uint8)."""
    desc, bits = _ct_scheme(qc)
    rep = InspectReport(ckpt.folder, "compressed-tensors", formats=[desc])
    modules: dict[str, list[str]] = {}
    for name, entry in ckpt.tensors.items():
        prefix, _, part = name.rpartition(".")
        quantized_weight = part == "weight" and entry.dtype in (torch.int8, torch.float8_e4m3fn)
        if part in _CT_PARTS or quantized_weight:
            modules.setdefault(prefix, []).append(name)
    for module, names in modules.items():
        weight = ckpt.tensors.get(f"{module}.weight_packed") or ckpt.tensors.get(f"{module}.weight")
        if weight is None:  # only side tensors: count them as plain
            continue
        n, k = weight.shape[0], weight.shape[1] * max(1, 8 * weight.dtype.itemsize // bits)
        rep.rows.append({"name": module, "shape": [n, k], "dtype": desc.split(": ")[1], "layout": "-",
                         "bytes": sum(ckpt.tensors[t].nbytes for t in names)})
        rep.bf16_bytes += n * k * 2
    owned = {t for module, names in modules.items() for t in names if module in {r["name"] for r in rep.rows}}
    for name, entry in ckpt.tensors.items():
        if name not in owned:
            rep.rows.append({"name": name, "shape": list(entry.shape), "dtype": dtype_name(entry.dtype), "layout": "-",
                             "bytes": entry.nbytes})
            rep.bf16_bytes += _bf16_bytes(entry)
    rep.total_bytes = sum(e.nbytes for e in ckpt.tensors.values())
    return rep


def _hf(ckpt: Checkpoint) -> InspectReport:
    rep = InspectReport(ckpt.folder, "hf", note=ckpt.note)
    for name, entry in ckpt.tensors.items():
        rep.rows.append({"name": name, "shape": list(entry.shape), "dtype": dtype_name(entry.dtype), "layout": "-",
                         "bytes": entry.nbytes})
        rep.bf16_bytes += _bf16_bytes(entry)
    rep.formats = sorted({dtype_name(e.dtype) for e in ckpt.tensors.values()})
    rep.total_bytes = sum(e.nbytes for e in ckpt.tensors.values())
    return rep


def diagram_subject(folder: Path, arch: str = "sm90") -> tuple[Any, Any, str]:
    """(layout, format, label) to draw for a folder: a packed folder's first module's layout, or the
    layout ``arch`` would get for a quantized folder's first module."""
    from turbopack.layouts import get_layout

    reports = inspect(folder)
    rep = reports[0]
    if rep.kind == "hf":
        raise TurbopackError(f"{folder}: an unquantized model has no layout to draw; pass a quantized or packed folder")
    manifest = read_manifest(rep.folder)
    if not manifest["tensors"]:
        raise TurbopackError(f"{rep.folder}: no quantized modules; nothing to draw")
    module, info = next(iter(manifest["tensors"].items()))
    fmt = format_from_params(info["format"])
    if rep.kind == "packed":
        return get_layout(info["layout"]), fmt, f"{module} ({rep.arch})"
    from turbopack.layouts.packing import select_layout

    choice = select_layout(fmt, arch, tuple(info["shape"]), module)
    return get_layout(choice.layout), fmt, f"{module} ({arch})"
