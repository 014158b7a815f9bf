"""Writing an output folder: the steps every command that writes one shares.

quantize (RTN and calibrated), pack, convert and export all stream tensors in row chunks of
:data:`CHUNK_BYTES` into a :class:`~turbopack.checkpoint.ShardedWriter`, then finish the folder
with :func:`write_folder`: config.json (the source's, with our ``quantization_config``), the
tokenizer/generation side files copied as they are, and the turbopack.json manifest.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from turbopack.checkpoint import Checkpoint, ShardedWriter, write_manifest
from turbopack.formats import Format, check_finite
from turbopack.packer.families import fused_group

#: row chunk size for streaming a tensor (read, quantize/copy, write); a module larger than this is
#: also packed in row chunks of whole N tiles
CHUNK_BYTES = 64 << 20
#: files beside the weights that a model needs and that turbopack copies unchanged
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
              "vocab.json", "merges.txt", "generation_config.json", "chat_template.jinja", "chat_template.json",
              "added_tokens.json")
QUANT_CONFIG_VERSION = 1

Advance = Callable[[int], Any]


def quant_config(fmt: Format, ignore, lm_head: bool, method: str = "rtn", **extra: Any) -> dict[str, Any]:
    """config.json's ``quantization_config`` of an arch-neutral quantized folder (``extra`` keys last)."""
    return {"quant_method": "turbopack", "version": QUANT_CONFIG_VERSION, **fmt.params(), "method": method,
            "packed": False, "ignore": sorted(ignore), "lm_head": lm_head, **extra}


def copy_tensor(ckpt: Checkpoint, name: str, writer: ShardedWriter, advance: Advance = lambda n: None) -> None:
    """Stream one tensor unchanged into the writer, row chunk by row chunk."""
    for start, chunk in ckpt.iter_row_chunks(name, CHUNK_BYTES):
        writer.write_rows(name, start, chunk) if chunk.dim() else writer.write(name, chunk)
        advance(chunk.numel() * chunk.element_size())


def quantize_tensor(ckpt: Checkpoint, name: str, fmt: Format, writer: ShardedWriter, advance: Advance) -> None:
    """RTN-quantize one weight row chunk by row chunk into ``<module>.<suffix>`` tensors (a
    tensor-wide format first takes its statistics in a pass over every row)."""
    prefix = name.removesuffix(".weight")
    where = f"{ckpt.location[name].name}:{name}"
    stats = weight_stats(ckpt, name, fmt)
    specs = {s.suffix: s for s in fmt.specs(ckpt.tensors[name].shape)}
    for start, chunk in ckpt.iter_row_chunks(name, CHUNK_BYTES):
        check_finite(where, chunk)
        for suffix, t in fmt.quantize(chunk, stats).items():
            writer.write_rows(f"{prefix}.{suffix}", start if specs[suffix].per_row else 0, t)
        advance(chunk.numel() * chunk.element_size())


def weight_stats(ckpt: Checkpoint, name: str, fmt: Format) -> dict[str, float] | None:
    """The tensor-wide statistics a format needs for weight ``name`` (None when it needs none): a
    pass over every row of the weight, or of its fused group (q|k|v, gate|up) for formats whose
    fused linears must share them (``Format.fused_tensor_stats``)."""
    if not fmt.needs_tensor_stats:
        return None
    names = [n for n in fused_group(name) if n in ckpt.tensors] if fmt.fused_tensor_stats else [name]
    return fmt.tensor_stats(chunk for n in names for _, chunk in ckpt.iter_row_chunks(n, CHUNK_BYTES))


def write_folder(folder: Path, source: Path, config: dict, quantization_config: dict, manifest: dict) -> None:
    """Finish an output folder: config.json (``config`` with ``quantization_config``), the side
    files found in ``source``, and the manifest."""
    config = dict(config)
    config["quantization_config"] = quantization_config
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for side in SIDE_FILES:
        if (source / side).is_file():
            shutil.copy2(source / side, folder / side)
    write_manifest(folder, manifest)
