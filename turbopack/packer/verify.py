"""`turbopack verify`: are a folder's bytes what its manifest says, and (with --against) does every
packed module unpack to exactly the arch-neutral tensors it was packed from?

Checks, per folder (every <arch>/ and rank<r>/ subfolder of a multi-arch or TP output):
  1. each shard's size and sha256 against the manifest (a changed byte anywhere is caught here);
  2. each manifest tensor exists with the dtype and shape its layout's ``packed_specs`` give, and
     the layout version installed is the one it was packed with;
  3. --against QUANTIZED: every packed module, unpacked, is bit-identical to the source module's
     tensors (split the same way for a TP rank); every plain tensor is bit-identical too.
A failed check is a problem in the report (exit 1); unreadable input is a TurbopackError (exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from turbopack.checkpoint import MANIFEST_NAME, Checkpoint, read_manifest, sha256_file
from turbopack.checkpoint.safetensors_stream import ST_DTYPES
from turbopack.errors import CheckpointError, UnknownNameError
from turbopack.formats import dtype_name, format_from_params
from turbopack.layouts import get_layout
from turbopack.packer import tp as tpmod
from turbopack.packer.inspect import packed_folders
from turbopack.packer.pack import PACKED_KIND, Source, open_source

DTYPE_BY_NAME = {dtype_name(d): d for d in ST_DTYPES}


@dataclass
class FolderReport:
    folder: Path
    shards: int = 0
    tensors: int = 0
    compared: int = 0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "ok": not self.problems, "shards": self.shards, "tensors": self.tensors,
                "compared": self.compared, "problems": self.problems}


@dataclass
class VerifyReport:
    path: Path
    against: Path | None
    folders: list[FolderReport]

    @property
    def ok(self) -> bool:
        return all(not f.problems for f in self.folders)

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "against": str(self.against) if self.against else None, "ok": self.ok,
                "folders": [f.as_dict() for f in self.folders]}


def verify(path: str | Path, against: str | Path | None = None) -> VerifyReport:
    src = _against(against) if against is not None else None
    folders = [verify_folder(f, src) for f in packed_folders(path)]
    return VerifyReport(Path(path), Path(against) if against is not None else None, folders)


def _against(against: str | Path) -> Source:
    if not (Path(against) / MANIFEST_NAME).is_file():
        raise CheckpointError(f"{against}: not a quantized folder (no {MANIFEST_NAME}); --against takes the "
                              f"`turbopack quantize` output the pack was made from")
    return open_source(against)


def verify_folder(folder: Path, src: Source | None = None) -> FolderReport:
    report = FolderReport(folder)
    manifest = read_manifest(folder)
    check_shards(folder, manifest, report)
    if report.problems:
        return report  # headers of a changed shard cannot be trusted
    ckpt = Checkpoint.open(folder)
    if manifest["kind"] == PACKED_KIND:
        check_packed_tensors(ckpt, manifest, report)
    else:
        check_quantized_tensors(ckpt, manifest, report)
    if src is not None and not report.problems:
        if manifest["kind"] != PACKED_KIND:
            raise CheckpointError(
                f"{folder}: is a {manifest['kind']} folder; --against compares a packed folder with its source"
            )
        compare_with_source(ckpt, manifest, src, report)
    return report


def check_shards(folder: Path, manifest: dict, report: FolderReport) -> None:
    for name, info in manifest["shards"].items():
        path = folder / name
        report.shards += 1
        if not path.is_file():
            report.problems.append(f"{path}: shard missing (the manifest lists it); re-pack")
            continue
        size = path.stat().st_size
        if size != info["bytes"]:
            report.problems.append(
                f"{path}: {size} bytes, the manifest says {info['bytes']}; the shard is truncated or changed, re-pack"
            )
            continue
        actual = sha256_file(path)
        if actual != info["sha256"]:
            report.problems.append(
                f"{path}: sha256 {actual} does not match the manifest's {info['sha256']}; the shard changed after "
                "packing, re-pack"
            )


def _check_entry(ckpt: Checkpoint, name: str, dtype: torch.dtype, shape: tuple[int, ...], report: FolderReport) -> None:
    report.tensors += 1
    entry = ckpt.tensors.get(name)
    if entry is None:
        report.problems.append(f"{ckpt.folder}: tensor {name} is in the manifest but in no shard; re-pack")
    elif entry.dtype != dtype or tuple(entry.shape) != tuple(shape):
        report.problems.append(
            f"{ckpt.folder}: tensor {name} is {entry.dtype} {list(entry.shape)}, expected {dtype} {list(shape)}"
        )


def check_packed_tensors(ckpt: Checkpoint, manifest: dict, report: FolderReport) -> None:
    for module, info in manifest["tensors"].items():
        try:
            layout = get_layout(info.get("layout"))
        except UnknownNameError as e:
            raise CheckpointError(f"{ckpt.folder / MANIFEST_NAME}: {module}: {e}; this folder was packed by another "
                                  f"turbopack: use that version, or re-pack with this one") from None
        if layout.version != info["layout_version"]:
            report.problems.append(
                f"{ckpt.folder}: {module} was packed with {info['layout']} v{info['layout_version']}, "
                f"this turbopack has v{layout.version}; re-pack"
            )
            continue
        fmt, shape = format_from_params(info["format"]), tuple(info["shape"])
        for spec in layout.packed_specs(fmt, shape):
            _check_entry(ckpt, f"{module}.{spec.suffix}", spec.dtype, spec.shape, report)
    for name, info in manifest.get("plain", {}).items():
        _check_entry(ckpt, name, DTYPE_BY_NAME[info["dtype"]], tuple(info["shape"]), report)


def check_quantized_tensors(ckpt: Checkpoint, manifest: dict, report: FolderReport) -> None:
    for module, info in manifest["tensors"].items():
        fmt = format_from_params(info["format"])
        for spec in fmt.specs(tuple(info["shape"])):
            _check_entry(ckpt, f"{module}.{spec.suffix}", spec.dtype, spec.shape, report)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def _describe(t: torch.Tensor) -> str:
    return f"{t.dtype} {list(t.shape)}"


def compare_with_source(ckpt: Checkpoint, manifest: dict, src: Source, report: FolderReport) -> None:
    """Stops at the first mismatch: it names the tensor; later ones would only repeat the cause."""
    missing = sorted(set(src.modules) - set(manifest["tensors"]))
    if missing:
        report.problems.append(
            f"{ckpt.folder}: source module {missing[0]} is not in the packed manifest; re-pack from {src.folder}"
        )
        return
    for module, info in manifest["tensors"].items():
        if module not in src.modules:
            report.problems.append(
                f"{ckpt.folder}: {module} is not a quantized module of {src.folder}; wrong --against?"
            )
            return
        fmt, full = src.modules[module]
        sl = tpmod.Slice.from_dict(info["tp"])
        expected = tpmod.split_quantized(module, fmt, src.module(module), full, sl)
        layout = get_layout(info["layout"])
        packed = {t.removeprefix(module + "."): ckpt.read(t) for t in info["tensors"]}
        got = layout.unpack(format_from_params(info["format"]), packed, tuple(info["shape"]))
        for suffix, want in expected.items():
            have = got.get(suffix)
            if have is None or not same_bits(have, want):
                what = "missing" if have is None else _describe(have)
                report.problems.append(
                    f"{ckpt.folder}: {module}.{suffix} unpacks ({info['layout']}) to {what} that is not "
                    f"bit-identical to the source's {_describe(want)} in {src.folder}"
                )
                return
        report.compared += 1
    tp, rank = manifest.get("tp", 1), manifest.get("rank", 0)
    for name in src.plain:
        want = tpmod.split_plain(name, src.ckpt.read(name), tp, src.config)[rank]
        if name not in ckpt.tensors or not same_bits(ckpt.read(name), want):
            report.problems.append(f"{ckpt.folder}: plain tensor {name} differs from the source's in {src.folder}")
            return
        report.compared += 1
