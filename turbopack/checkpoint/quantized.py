"""Reading an arch-neutral quantized folder back: per module, its format and tensors.

The manifest (turbopack.json) says which modules are quantized, in which format, under which
tensor names; everything else is a plain tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from turbopack.checkpoint import Checkpoint, read_manifest
from turbopack.errors import CheckpointError
from turbopack.formats import Format, format_from_params


@dataclass
class QuantizedModule:
    """One quantized linear: ``format``, original ``shape`` (N, K), ``tensors`` by suffix."""

    name: str
    format: Format
    shape: tuple[int, int]
    tensors: dict[str, torch.Tensor]

    def dequantize(self) -> torch.Tensor:
        return self.format.dequantize(self.tensors)


class QuantizedCheckpoint:
    def __init__(self, folder: str | Path):
        self.ckpt = Checkpoint.open(folder)
        self.folder = self.ckpt.folder
        self.config = self.ckpt.config
        self.manifest = read_manifest(self.folder)
        self.modules: dict[str, dict] = self.manifest["tensors"]
        owned = {t for m in self.modules.values() for t in m["tensors"]}
        for module, info in self.modules.items():
            missing = [t for t in info["tensors"] if t not in self.ckpt.tensors]
            if missing:
                raise CheckpointError(
                    f"{self.folder}: manifest lists {missing[0]} for {module} but no shard holds it; the folder is "
                    "incomplete"
                )
        self.plain = [n for n in self.ckpt.tensors if n not in owned]

    def module(self, name: str) -> QuantizedModule:
        info = self.modules[name]
        fmt = format_from_params(info["format"])
        prefix = name + "."
        tensors = {t.removeprefix(prefix): self.ckpt.read(t) for t in info["tensors"]}
        return QuantizedModule(name, fmt, tuple(info["shape"]), tensors)

    def plain_tensor(self, name: str) -> torch.Tensor:
        return self.ckpt.read(name)
