"""`turbopack inspect`: what a folder holds, for an original HF model, a quantized or a packed folder.

Reads headers and manifests only (no tensor data), so it is instant on any size of model. The
compression ratio compares the folder's bytes with the same parameters stored as bf16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    @property
    def ratio(self) -> float:
        return self.bf16_bytes / self.total_bytes if self.total_bytes else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "kind": self.kind, "arch": self.arch, "tp": self.tp, "rank": self.rank,
                "formats": self.formats, "total_bytes": self.total_bytes, "bf16_bytes": self.bf16_bytes,
                "compression_vs_bf16": round(self.ratio, 3), "tensors": self.rows}


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
        raise CheckpointError(f"{path}: no {MANIFEST_NAME} here or in its arch/rank subfolders; point at a `turbopack pack` output")
    return found


def inspect_folder(folder: Path) -> InspectReport:
    ckpt = Checkpoint.open(folder)
    if not (ckpt.folder / MANIFEST_NAME).is_file():
        return _hf(ckpt)
    manifest = read_manifest(ckpt.folder)
    rep = InspectReport(ckpt.folder, manifest["kind"], manifest.get("arch"), manifest.get("tp", 1), manifest.get("rank", 0))
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


def _hf(ckpt: Checkpoint) -> InspectReport:
    rep = InspectReport(ckpt.folder, "hf")
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
