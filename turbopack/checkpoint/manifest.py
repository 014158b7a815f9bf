"""turbopack.json: the manifest of every folder turbopack writes.

It records the tool and manifest versions, the source model, what each tensor became (format
parameters, original shape, and for packed folders arch/layout/padding), what was left
unquantized and why, and the sha256 of every shard so ``turbopack verify`` can check the bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from turbopack import __version__
from turbopack.checkpoint.source import read_json
from turbopack.errors import CheckpointError

MANIFEST_NAME = "turbopack.json"
MANIFEST_VERSION = 1


def tool_version() -> str:
    return __version__


def new_manifest(kind: str, source: str, **fields: Any) -> dict[str, Any]:
    return {
        "manifest_version": MANIFEST_VERSION,
        "turbopack_version": tool_version(),
        "kind": kind,
        "source": source,
        **fields,
    }


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing; this folder was not written by turbopack (run `turbopack quantize` on the original "
            "model)"
        )
    manifest = read_json(path)
    version = manifest.get("manifest_version")
    if type(version) is not int:
        raise CheckpointError(
            f"{path}: no manifest_version; the manifest is corrupt (re-run the command that wrote this folder)"
        )
    if version > MANIFEST_VERSION:
        raise CheckpointError(
            f"{path}: manifest version {version} is newer than this turbopack understands ({MANIFEST_VERSION}); "
            "upgrade turbopack"
        )
    for key, kind in (("kind", str), ("tensors", dict), ("shards", dict)):
        if not isinstance(manifest.get(key), kind):
            raise CheckpointError(
                f"{path}: no {key!r} {kind.__name__} entry; the manifest is corrupt (re-run the command that wrote "
                "this folder)"
            )
    for name, info in manifest["tensors"].items():
        if not isinstance(info, dict):
            raise CheckpointError(
                f"{path}: tensors[{name!r}] is not an object; the manifest is corrupt (re-run the command that wrote "
                "this folder)"
            )
    for name, info in manifest["shards"].items():
        if not (isinstance(info, dict) and type(info.get("bytes")) is int and isinstance(info.get("sha256"), str)):
            raise CheckpointError(
                f"{path}: shards[{name!r}] needs bytes and sha256; the manifest is corrupt (re-run the command that "
                "wrote this folder)"
            )
    return manifest
