"""Reading a Hugging Face-style checkpoint folder lazily: config.json + *.safetensors shards.

Tensors are never loaded whole unless asked: :meth:`Checkpoint.read_rows` reads a row range through
``safetensors``' lazy slices, so a 1 GiB tensor streams in chunks. Pickle checkpoints (.bin/.pt/.pth)
are refused, never unpickled. Model specs that are not local folders (Hub ids) resolve through
:data:`RESOLVERS`, which the Hub module extends.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import safe_open

from turbopack.checkpoint.safetensors_stream import TensorEntry, read_header
from turbopack.checkpoint.text_view import text_view
from turbopack.errors import CheckpointError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
PICKLE_HINT = ("Convert them to safetensors first, where you trust the file (e.g. transformers: "
               "model.save_pretrained(out, safe_serialization=True))")
#: Resolvers tried in order for a model spec that is not an existing local folder; each returns a
#: local folder or None. The Hub integration appends one.
RESOLVERS: list[Callable[[str], Path | None]] = []


def resolve_model(spec: str | Path) -> Path:
    path = Path(spec)
    if path.is_dir():
        return path
    for resolver in RESOLVERS:
        found = resolver(str(spec))
        if found is not None:
            return found
    if path.is_file() and path.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{spec}: a pickle checkpoint; turbopack never unpickles (it can run code). {PICKLE_HINT}"
        )
    if path.exists():
        raise CheckpointError(f"{spec}: expected a model folder (config.json + *.safetensors), got a file")
    raise CheckpointError(
        f"{spec}: no such model folder; pass a local Hugging Face folder (config.json + *.safetensors)"
    )


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: missing; copy it from the original model (a model folder needs config.json + *.safetensors)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(
            f"{path}: not valid JSON ({str(e).splitlines()[0] if str(e) else type(e).__name__}); fix or re-download it"
        ) from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object; fix or re-download it")
    return data


def _shard_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if (
            not isinstance(weight_map, dict)
            or not weight_map
            or not all(isinstance(f, str) for f in weight_map.values())
        ):
            raise CheckpointError(f"{index}: no weight_map of tensor name -> shard file; re-export the checkpoint")
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise CheckpointError(f"{index}: names shard {missing[0]} which is missing; re-download the checkpoint")
        return [folder / f for f in files]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]  # other *.safetensors beside it are not weights (HF rule)
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{folder}: only pickle weights ({pickles[0]}); turbopack never unpickles (it can run code). {PICKLE_HINT}"
        )
    raise CheckpointError(f"{folder}: no *.safetensors weights found")


@dataclass
class Checkpoint:
    """A local checkpoint folder with its config and a lazy tensor index. A multimodal folder
    (turbopack.checkpoint.text_view) is its language model: its config and names, ``stored``
    mapping a name to the one in the files, and ``note`` saying what was left out."""

    folder: Path
    config: dict
    tensors: dict[str, TensorEntry] = field(default_factory=dict)
    location: dict[str, Path] = field(default_factory=dict)
    metadata: dict[Path, dict[str, str]] = field(default_factory=dict)
    stored: dict[str, str] = field(default_factory=dict)  # name -> name in the files, where they differ
    note: str | None = None

    @classmethod
    def open(cls, spec: str | Path) -> Checkpoint:
        folder = resolve_model(spec)
        config = read_json(folder / "config.json")
        ckpt = cls(folder, config)
        for shard in _shard_files(folder):
            entries, meta = read_header(shard)
            ckpt.metadata[shard] = meta
            for name, entry in entries.items():
                if name in ckpt.tensors:
                    raise CheckpointError(
                        f"{shard}: tensor {name!r} also appears in {ckpt.location[name].name}; the checkpoint is "
                        "inconsistent"
                    )
                ckpt.tensors[name] = entry
                ckpt.location[name] = shard
        view = text_view(config, list(ckpt.tensors), str(folder / "config.json"))
        if view is not None:
            ckpt.config, ckpt.note = view.config, view.note
            ckpt.stored = {n: s for n, s in view.stored.items() if n != s}
            ckpt.tensors = {n: replace(ckpt.tensors[s], name=n) for n, s in view.stored.items()}
            ckpt.location = {n: ckpt.location[s] for n, s in view.stored.items()}
        return ckpt

    def names(self) -> list[str]:
        return list(self.tensors)

    def file_name(self, name: str) -> str:
        """``name``'s name in the safetensors files."""
        return self.stored.get(name, name)

    def read(self, name: str) -> torch.Tensor:
        with safe_open(str(self.location[name]), framework="pt") as f:
            return f.get_tensor(self.file_name(name))

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        with safe_open(str(self.location[name]), framework="pt") as f:
            return f.get_slice(self.file_name(name))[start:stop]

    def iter_row_chunks(self, name: str, max_bytes: int = 64 << 20) -> Iterator[tuple[int, torch.Tensor]]:
        """(row_start, rows) chunks of at most ~max_bytes each."""
        entry = self.tensors[name]
        n = entry.shape[0] if entry.shape else 1
        if len(entry.shape) < 2:
            yield 0, self.read(name)
            return
        row_bytes = max(1, entry.nbytes // max(n, 1))
        step = max(1, max_bytes // row_bytes)
        with safe_open(str(self.location[name]), framework="pt") as f:
            sl = f.get_slice(self.file_name(name))
            for start in range(0, n, step):
                yield start, sl[start:min(n, start + step)]
