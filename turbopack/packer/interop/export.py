"""`turbopack export QUANTIZED --to compressed-tensors -o OUT`: our arch-neutral folder as a
compressed-tensors checkpoint that vLLM (and transformers) load, with the same weights bit for bit.

Per quantized linear ``m`` of shape [N, K] (conventions: compressed_tensors' pack_to_int32 and its
schemes; see turbopack/packer/interop/compressed_tensors.py, the inverse):
  w4a16  pack-quantized: m.weight_packed int32 [N, K/8] (our codes are already q + 8, LSB first),
         m.weight_scale [N, K/G] in our scale dtype, m.weight_shape int64 [2],
         m.weight_zero_point int32 [ceil(N/8), K/G] (asymmetric only; zeros packed along N)
  w8a16  pack-quantized 8-bit channel: m.weight_packed int32 [N, K/4] (q + 128), weight_scale fp32 [N, 1]
  w8a8   int-quantized: m.weight int8 [N, K], weight_scale fp32 [N, 1]; int8 activations dynamic per token
  fp8    float-quantized: m.weight e4m3 [N, K], weight_scale fp32 [N, 1] (or [1]); fp8 activations per token
  nvfp4  nvfp4-pack-quantized (NVFP4A16, weight-only): m.weight_packed uint8 [N, K/2], m.weight_scale
         e4m3 [N, K/16], m.weight_global_scale fp32 [1]: our qweight / scales / global_scale, byte for byte
One config group targets every Linear; the linears we kept unquantized go in ``ignore``.
Dequantized, every weight equals ours exactly in float32 ((q - z) * s is exact there; a loader that
dequantizes in 16 bits rounds the same exact product once). Output is atomic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from turbopack.checkpoint import (
    Checkpoint,
    ShardedWriter,
    ShardPlan,
    TensorEntry,
    atomic_output,
    check_output,
    new_manifest,
    read_manifest,
)
from turbopack.checkpoint.quantized import QuantizedCheckpoint
from turbopack.checkpoint.sharded import DEFAULT_SHARD_BYTES
from turbopack.errors import TurbopackError
from turbopack.formats import Format, FormatName, format_from_params
from turbopack.packer.families import family_of
from turbopack.packer.folder import copy_tensor, write_folder
from turbopack.packer.interop.base import pack_lsb
from turbopack.packer.progress import byte_progress

TARGETS = ("compressed-tensors",)
EXPORT_KIND = "compressed-tensors"
#: our nvfp4 tensors -> compressed-tensors' names (the bytes are the same)
NVFP4_NAMES = {"qweight": "weight_packed", "scales": "weight_scale", "global_scale": "weight_global_scale"}


def scheme(fmt: Format) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """(weights args, input activation args, storage format) in compressed-tensors' schema."""
    name = fmt.name
    if name == FormatName.W4A16:
        w = {"num_bits": 4, "type": "int", "symmetric": fmt.sym, "strategy": "group", "group_size": fmt.group_size,
             "dynamic": False, "actorder": None, "observer": "minmax"}
        return w, None, "pack-quantized"
    if name == FormatName.NVFP4:  # compressed-tensors' NVFP4A16 preset
        w = {"num_bits": 4, "type": "float", "symmetric": True, "strategy": "tensor_group", "group_size": 16,
             "dynamic": False, "actorder": None, "observer": "minmax", "scale_dtype": "torch.float8_e4m3fn"}
        return w, None, "nvfp4-pack-quantized"
    if name == FormatName.W8A16:
        w = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "group_size": None,
             "dynamic": False, "actorder": None, "observer": "minmax"}
        return w, None, "pack-quantized"
    kind = "float" if name == FormatName.FP8 else "int"
    strategy = "tensor" if getattr(fmt, "per_tensor", False) else "channel"
    w = {"num_bits": 8, "type": kind, "symmetric": True, "strategy": strategy, "group_size": None, "dynamic": False,
         "observer": "minmax"}
    acts = {"num_bits": 8, "type": kind, "symmetric": True, "strategy": "token", "dynamic": True, "observer": None}
    return w, acts, "float-quantized" if kind == "float" else "int-quantized"


def export_specs(fmt: Format, module: str, shape: tuple[int, int]) -> list[TensorEntry]:
    n, k = shape
    name = fmt.name
    if name == FormatName.NVFP4:
        return [TensorEntry(f"{module}.{NVFP4_NAMES[s.suffix]}", s.dtype, s.shape) for s in fmt.specs(shape)]
    if name == FormatName.W4A16:
        out = [TensorEntry(f"{module}.weight_packed", torch.int32, (n, -(-k // 8))),
               TensorEntry(f"{module}.weight_scale", fmt.specs(shape)[1].dtype, (n, k // fmt.group_size)),
               TensorEntry(f"{module}.weight_shape", torch.int64, (2,))]
        if not fmt.sym:
            out.append(TensorEntry(f"{module}.weight_zero_point", torch.int32, (-(-n // 8), k // fmt.group_size)))
        return out
    if name == FormatName.W8A16:
        return [TensorEntry(f"{module}.weight_packed", torch.int32, (n, -(-k // 4))),
                TensorEntry(f"{module}.weight_scale", torch.float32, (n, 1)),
                TensorEntry(f"{module}.weight_shape", torch.int64, (2,))]
    scale_rows = 1 if getattr(fmt, "per_tensor", False) else n
    wdtype = torch.float8_e4m3fn if name == FormatName.FP8 else torch.int8
    return [TensorEntry(f"{module}.weight", wdtype, (n, k)),
            TensorEntry(f"{module}.weight_scale", torch.float32, (scale_rows, 1) if scale_rows > 1 else (1,))]


def export_tensors(fmt: Format, q: dict[str, torch.Tensor], shape: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Our arch-neutral tensors of one linear -> compressed-tensors tensors {suffix: tensor}."""
    n, k = shape
    name = fmt.name
    shape_t = torch.tensor([n, k], dtype=torch.int64)
    if name == FormatName.NVFP4:
        return {NVFP4_NAMES[suffix]: t.contiguous() for suffix, t in q.items()}
    if name == FormatName.W4A16:
        out = {
            "weight_packed": pack_lsb(fmt.codes(q), 4, dim=1),
            "weight_scale": q["scales"].contiguous(),
            "weight_shape": shape_t,
        }
        if not fmt.sym:
            out["weight_zero_point"] = pack_lsb(q["zeros"], 4, dim=0)
        return out
    if name == FormatName.W8A16:
        codes = q["qweight"].to(torch.int64) + 128
        return {"weight_packed": pack_lsb(codes, 8, dim=1), "weight_scale": q["scales"].float().reshape(n, 1),
                "weight_shape": shape_t}
    s = q["scales"].float()
    return {"weight": q["qweight"].contiguous(), "weight_scale": s.reshape(n, 1) if s.numel() > 1 else s.reshape(1)}


@dataclass
class ExportResult:
    out: Path
    to: str
    format: str
    modules: int
    ignore: list[str]
    output_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "to": self.to, "format": self.format, "quantized": self.modules,
                "ignore": self.ignore, "output_bytes": self.output_bytes}


def _open_quantized(src: str | Path) -> QuantizedCheckpoint:
    folder = Checkpoint.open(src).folder
    manifest = read_manifest(folder)
    if manifest["kind"] != "quantized":
        raise TurbopackError(
            f"{folder}: is a {manifest['kind']} folder; export the arch-neutral quantized folder it came "
            f"from ({manifest.get('source')}), the output of `turbopack quantize` or `turbopack convert`"
        )
    return QuantizedCheckpoint(folder)


def _ignore_list(qc: QuantizedCheckpoint) -> list[str]:
    """Linear modules kept unquantized: vLLM would otherwise expect them quantized."""
    family = family_of(qc.config, str(qc.folder / "config.json"))
    names = [n for n in qc.plain if n.endswith(".weight") and len(qc.ckpt.tensors[n].shape) == 2
             and (n == "lm_head.weight" or re.fullmatch(family.linear_pattern, n)
                  or re.fullmatch(family.router_pattern, n))]  # MoE routers: 16-bit Linears in vLLM
    if "lm_head.weight" not in qc.ckpt.tensors and "lm_head" not in qc.modules:
        names.append("lm_head.weight")  # tied to the embedding, still an unquantized Linear in vLLM
    return sorted(n.removesuffix(".weight") for n in names)


def quantization_config(fmt: Format, ignore: list[str]) -> dict[str, Any]:
    weights, acts, storage = scheme(fmt)
    group = {"targets": ["Linear"], "weights": weights, "input_activations": acts, "output_activations": None,
             "format": storage}
    return {"quant_method": "compressed-tensors", "format": storage, "quantization_status": "compressed",
            "config_groups": {"group_0": group}, "ignore": ignore, "kv_cache_scheme": None,
            "global_compression_ratio": None, "sparsity_config": {}, "transform_config": {}}


def export(src: str | Path, out: str | Path, to: str = "compressed-tensors", *, force: bool = False,
           max_shard_bytes: int = DEFAULT_SHARD_BYTES, progress: bool = True) -> ExportResult:
    """Write the arch-neutral quantized folder SRC as a ``to`` checkpoint in OUT."""
    if to not in TARGETS:
        raise TurbopackError(f"--to {to!r}: unknown export target; known: {', '.join(TARGETS)}")
    out = Path(out)
    qc = _open_quantized(src)
    check_output(out, force, inputs=(qc.folder,))
    fmts = {m: _fmt(qc, m) for m in qc.modules}
    if not fmts:
        raise TurbopackError(f"{qc.folder}: no quantized modules to export")
    fmt = next(iter(fmts.values()))
    if any(f != fmt for f in fmts.values()):
        raise TurbopackError(
            f"{qc.folder}: modules use different formats; compressed-tensors export takes one format per folder"
        )
    order = _order(qc, fmts)
    plan = ShardPlan.build([entries for _, entries in order], max_shard_bytes)
    ignore = _ignore_list(qc)
    total = sum(e.nbytes for _, entries in order for e in entries)
    with atomic_output(out, force) as tmp, byte_progress(f"export {to}", total, progress) as (bar, task):
        writer = ShardedWriter(tmp, plan, {"format": "pt"})
        for name, entries in order:
            bar.update(task, description=name[-40:])
            if name in fmts:
                m = qc.module(name)
                for suffix, t in export_tensors(m.format, m.tensors, m.shape).items():
                    writer.write(f"{name}.{suffix}", t)
            else:
                copy_tensor(qc.ckpt, name, writer)
            bar.advance(task, sum(e.nbytes for e in entries))
        shards = writer.finish()
        _finish_folder(qc, tmp, fmt, ignore, shards)
    return ExportResult(out, to, fmt.describe(), len(fmts), ignore, sum(s["bytes"] for s in shards.values()))


def _fmt(qc: QuantizedCheckpoint, module: str) -> Format:
    return format_from_params(qc.modules[module]["format"])


def _order(qc: QuantizedCheckpoint, fmts: dict[str, Format]) -> list[tuple[str, list[TensorEntry]]]:
    """(module or plain tensor, its output entries) in the source's tensor order."""
    first = {qc.modules[m]["tensors"][0]: m for m in fmts}
    order = []
    for name in qc.ckpt.tensors:
        if name in first:
            m = first[name]
            order.append((m, export_specs(fmts[m], m, tuple(qc.modules[m]["shape"]))))
        elif name in qc.plain:
            order.append((name, [qc.ckpt.tensors[name]]))
    return order


def _finish_folder(qc: QuantizedCheckpoint, tmp: Path, fmt: Format, ignore: list[str], shards: dict) -> None:
    # tensors stays empty: these are not our tensor names, so no turbopack reader may take this
    # folder for a quantized one; the manifest is here for `turbopack verify` (shard sha256).
    manifest = new_manifest(EXPORT_KIND, str(qc.folder), format=fmt.params(), tensors={}, shards=shards,
                            exported={"to": "compressed-tensors", "ignore": ignore, "modules": sorted(qc.modules)})
    write_folder(tmp, qc.folder, qc.config, quantization_config(fmt, ignore), manifest)
