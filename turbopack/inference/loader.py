"""Loading a checkpoint folder into the reference Transformer, tensors straight to the device.

Three kinds of folder load:
  * a plain Hugging Face folder (no turbopack.json): the bf16 reference model;
  * an arch-neutral quantized folder (`turbopack quantize`): on a GPU it is packed at load for the
    local arch by the layouts' pure functions (`layouts.packing.pack_module`), module by module; on the CPU it runs
    with the reference backend (or, given ``arch``, packed for that arch on the emulator);
  * a packed folder (`turbopack pack`): its tensors are the kernels' tensors; a GPU whose arch is
    not the folder's is refused with the repack command, unless ``repack`` and the folder's
    arch-neutral source is at hand (then that source is packed at load instead).

The model is built on the meta device, quantized linears are swapped for QuantLinear, and every
tensor is then read by safetensors directly onto the device and assigned in place: no CPU copy of
the model is ever made (a module being packed at load is staged on the CPU alone, one at a time).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from turbopack.checkpoint import MANIFEST_NAME, Checkpoint, read_json, read_manifest, resolve_model
from turbopack.checkpoint.text_view import text_config
from turbopack.device import resolve_device, safetensors_device
from turbopack.errors import CheckpointError, TurbopackError, UnknownNameError
from turbopack.formats import Format, format_from_params
from turbopack.hfconfig import convert_hint, foreign_quantization
from turbopack.inference.model import ROPE_TABLE_LEN, ModelConfig, Transformer, build_model, replace_linears
from turbopack.inference.moe_grouped import group_moe_experts
from turbopack.inference.qlinear import BACKENDS, Backend, QuantLinear, backend_of
from turbopack.layouts import get_layout
from turbopack.layouts.archs import arch_for_capability
from turbopack.layouts.packing import pack_module, select_layout


@dataclass
class ModulePlan:
    """How one quantized linear gets into memory."""

    fmt: Format
    shape: tuple[int, int]
    backend: Backend
    layout: Any = None
    pack_for: str | None = None  # arch to pack the arch-neutral tensors for at load


@dataclass
class Loaded:
    model: Transformer
    config: ModelConfig
    folder: Path
    kind: str  # "hf" | "quantized" | "packed"
    device: torch.device
    dtype: torch.dtype
    backend: str  # the quantized linears' backend ("none" for an unquantized model)
    arch: str | None = None
    format: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


def local_arch(device: torch.device) -> str:
    """The turbopack arch name ("sm90") of the GPU ``device``."""
    major, minor = torch.cuda.get_device_capability(device)
    return arch_for_capability(major, minor, torch.cuda.get_device_name(device)).name.value


def _manifest_layout(folder: Path, module: str, info: dict):
    try:
        layout = get_layout(info.get("layout"))
    except UnknownNameError as e:
        raise CheckpointError(f"{folder / MANIFEST_NAME}: {module}: {e}; this folder was packed by another turbopack: "
                              f"use that version, or re-pack with this one") from None
    if info.get("layout_version", layout.version) != layout.version:
        raise CheckpointError(f"{folder / MANIFEST_NAME}: {module} is packed as {layout.name.value} version "
                              f"{info['layout_version']}, this turbopack reads version {layout.version}; re-pack the "
                              f"arch-neutral folder with `turbopack pack`")
    return layout


# --- planning: which backend and layout for each module --------------------------------------


def _repack_hint(folder: Path, manifest: dict, arch: str) -> str:
    src = manifest.get("source") or "ARCH_NEUTRAL_FOLDER"
    return f"turbopack pack {src} --arch {arch} -o {folder.name}-{arch}"


def plan_modules(
    folder: Path,
    manifest: dict | None,
    device: torch.device,
    *,
    repack: bool,
    arch: str | None,
    backend: str | Backend | None,
) -> tuple[Path, str, dict[str, ModulePlan], str | None]:
    """(folder to read, kind, {module: plan}, arch the tensors run as)."""
    foreign = foreign_quantization(folder, manifest["kind"] if manifest else None)
    if foreign is not None:
        raise CheckpointError(convert_hint(folder, foreign, "turbopack run/load"))
    if manifest is None:
        return folder, "hf", {}, None
    backend = None if backend is None else backend_of(backend)
    kind = manifest["kind"]
    if kind == "packed":
        if int(manifest.get("tp", 1)) > 1:
            raise CheckpointError(
                f"{folder}: tensor-parallel rank folder (tp={manifest['tp']}); this runtime runs tp=1 "
                f"folders: {_repack_hint(folder, manifest, manifest.get('arch', 'smXX'))}"
            )
        packed_arch = manifest["arch"]
        want = local_arch(device) if device.type == "cuda" else packed_arch
        if want != packed_arch or (backend is not None and not BACKENDS.get(backend).needs_layout):
            src = Path(manifest.get("source", ""))
            if not repack:
                why = (
                    f"packed for {packed_arch} but this GPU is {want}"
                    if want != packed_arch
                    else "packed, but the reference backend runs arch-neutral tensors"
                )
                raise CheckpointError(f"{folder}: {why}; run `{_repack_hint(folder, manifest, want)}` "
                                      f"(or pass --repack to pack the arch-neutral source at load)")
            if not (src / MANIFEST_NAME).is_file():
                raise CheckpointError(f"{folder}: --repack needs the arch-neutral source {src}, which is not there; "
                                      f"point at a `turbopack quantize` output instead")
            return plan_modules(src, read_manifest(src), device, repack=False, arch=arch, backend=backend)
        be = backend or (Backend.CUDA if device.type == "cuda" else Backend.EMULATOR)
        plans = {m: ModulePlan(format_from_params(i["format"]), tuple(i["shape"]), be, _manifest_layout(folder, m, i))
                 for m, i in manifest["tensors"].items()}
        return folder, kind, plans, packed_arch
    if kind != "quantized":
        raise CheckpointError(f"{folder}: a {kind!r} folder; load a quantized, packed or Hugging Face folder")
    if backend is None:
        backend = Backend.CUDA if device.type == "cuda" else (Backend.EMULATOR if arch else Backend.REFERENCE)
    pack_for = None
    if BACKENDS.get(backend).needs_layout:
        pack_for = arch or (local_arch(device) if device.type == "cuda" else None)
        if pack_for is None:
            raise TurbopackError(
                f"{folder}: backend {backend.value!r} runs packed tensors; give the arch to pack for (e.g. sm90)"
            )
    plans = {}
    for m, i in manifest["tensors"].items():
        fmt, shape = format_from_params(i["format"]), tuple(i["shape"])
        layout = _select(fmt, pack_for, shape, m) if pack_for else None
        plans[m] = ModulePlan(fmt, shape, backend, layout, pack_for)
    return folder, kind, plans, pack_for


def _select(fmt: Format, arch: str, shape, name: str):
    return get_layout(select_layout(fmt, arch, shape, name).layout)


# --- building and filling the model ----------------------------------------------------------


def _set_tensor(model: nn.Module, name: str, t: torch.Tensor) -> None:
    parent, _, attr = name.rpartition(".")
    try:
        mod = model.get_submodule(parent)
    except AttributeError:
        raise CheckpointError(f"tensor {name!r} has no place in the model; is the config right?") from None
    if attr in mod._parameters:
        old = mod._parameters[attr]
        if tuple(old.shape) != tuple(t.shape):
            raise CheckpointError(f"tensor {name!r}: shape {list(t.shape)}, the model expects {list(old.shape)}")
        mod._parameters[attr] = nn.Parameter(t, requires_grad=False)
    elif attr in mod._buffers:
        old = mod._buffers[attr]
        if old is not None and (tuple(old.shape) != tuple(t.shape) or old.dtype != t.dtype):
            raise CheckpointError(
                f"tensor {name!r}: {t.dtype} {list(t.shape)}, the model expects {old.dtype} {list(old.shape)}"
            )
        mod._buffers[attr] = t
    else:
        raise CheckpointError(f"tensor {name!r} has no place in the model; is the config right?")


def quant_linear_factory(plans: dict[str, ModulePlan], has_bias: set[str], dtype: torch.dtype,
                         where: str = "the config") -> Callable[[str, nn.Linear], QuantLinear | None]:
    """``replace_linears``' factory: a QuantLinear on the meta device for every planned module,
    its shape checked against the linear the config (``where``) builds."""

    def factory(name: str, linear: nn.Linear) -> QuantLinear | None:
        p = plans.get(name)
        if p is None:
            return None
        if (linear.out_features, linear.in_features) != p.shape:
            raise CheckpointError(f"{name}: quantized shape {list(p.shape)} but {where} makes it "
                                  f"{[linear.out_features, linear.in_features]}")
        return QuantLinear(p.fmt, p.shape, layout=p.layout, backend=p.backend, bias=name in has_bias,
                           device="meta", dtype=dtype)

    return factory


def lm_head_is_tied(ckpt: Checkpoint, plans: dict[str, ModulePlan]) -> bool:
    """No lm_head tensor, quantized or not: tied to the embedding (HF's save_pretrained drops the copy)."""
    return "lm_head.weight" not in ckpt.tensors and "lm_head" not in plans


def tie_lm_head(model: nn.Module) -> None:
    """Point lm_head at the embedding again: loading assigned a new embedding Parameter."""
    model.get_output_embeddings().weight = model.get_input_embeddings().weight


def check_complete(model: nn.Module, folder: Path) -> None:
    """Every parameter and buffer was loaded: none is left on the meta device."""
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t is not None and t.is_meta]
    if missing:
        raise CheckpointError(f"{folder}: missing tensors {missing[:5]}; the folder is incomplete or not for "
                              f"its config.json")


def fill(model: nn.Module, ckpt: Checkpoint, plans: dict[str, ModulePlan], device: torch.device,
         dtype: torch.dtype) -> None:
    """Read every tensor of ``ckpt`` onto ``device`` into its place in ``model`` (plain floating
    tensors cast to ``dtype``); a module planned ``pack_for`` an arch is packed at load."""
    owner = {}
    for m, p in plans.items():
        for s in (
            p.layout.packed_specs(p.fmt, p.shape)
            if p.layout is not None and p.pack_for is None
            else p.fmt.specs(p.shape)
        ):
            owner[f"{m}.{s.suffix}"] = m
    to_pack = {m for m, p in plans.items() if p.pack_for is not None}
    by_shard: dict[Path, list[str]] = {}
    for name, shard in ckpt.location.items():
        if owner.get(name) in to_pack or name.endswith("rotary_emb.inv_freq"):
            continue
        by_shard.setdefault(shard, []).append(name)
    for shard, names in by_shard.items():
        with safe_open(str(shard), framework="pt", device=safetensors_device(device)) as f:
            for name in names:
                t = f.get_tensor(ckpt.file_name(name))
                if name not in owner and t.is_floating_point():
                    t = t.to(dtype)
                _set_tensor(model, name, t)
    for m in sorted(to_pack):
        _pack_at_load(model, ckpt, m, plans[m], device)


def _pack_at_load(model: nn.Module, ckpt: Checkpoint, name: str, p: ModulePlan, device: torch.device) -> None:
    q = {s.suffix: ckpt.read(f"{name}.{s.suffix}") for s in p.fmt.specs(p.shape)}
    packed = pack_module(p.fmt, q, p.shape, p.pack_for, name=name)
    for suffix, t in packed.tensors.items():
        _set_tensor(model, f"{name}.{suffix}", t.to(device))


def build(ckpt: Checkpoint, config: ModelConfig, plans: dict[str, ModulePlan], device: torch.device,
          dtype: torch.dtype, folder: Path) -> tuple[Transformer, ModelConfig]:
    """The reference Transformer of ``ckpt``, quantized linears per ``plans``, every tensor loaded
    on ``device``; returns it with its config (tie_word_embeddings as the files have it)."""
    if lm_head_is_tied(ckpt, plans):
        config = replace(config, tie_word_embeddings=True)
    has_bias = {m for m in plans if f"{m}.bias" in ckpt.tensors}
    model = build_model(config, device="meta", dtype=dtype)
    replace_linears(model, quant_linear_factory(plans, has_bias, dtype))
    if "lm_head" in plans:
        config = replace(config, tie_word_embeddings=False)
        model.config = config
    fill(model, ckpt, plans, device, dtype)
    if config.tie_word_embeddings and isinstance(model.lm_head, nn.Linear):
        tie_lm_head(model)
    model.setup_rope(min(config.max_position_embeddings, ROPE_TABLE_LEN))
    check_complete(model, folder)
    if config.moe is not None:  # W4 experts on the GPU kernels: stacked for the grouped path
        group_moe_experts(model)
    return model.eval(), config


def load(path: str | Path, device: str | torch.device = "auto", dtype: torch.dtype = torch.bfloat16, *,
         repack: bool = False, arch: str | None = None, backend: str | Backend | None = None) -> Loaded:
    """Load PATH (HF, quantized or packed folder) onto ``device``.

    ``backend`` overrides the quantized linears' backend ("reference", "emulator", "cuda");
    ``arch`` packs an arch-neutral folder for that arch (the CPU emulator's way to run a layout)."""
    folder = resolve_model(path)
    device = resolve_device(device)
    manifest = read_manifest(folder) if (folder / MANIFEST_NAME).is_file() else None
    read_from, kind, plans, run_arch = plan_modules(folder, manifest, device, repack=repack, arch=arch, backend=backend)
    ckpt = Checkpoint.open(read_from)
    model, config = build(ckpt, ModelConfig.from_hf_config(dict(ckpt.config)), plans, device, dtype, folder)
    fmts = sorted({p.fmt.describe() for p in plans.values()})
    backends = sorted({p.backend.value for p in plans.values()}) or ["none"]
    info = {"modules": len(plans), "read_from": str(read_from),
            "layouts": sorted({p.layout.name.value for p in plans.values() if p.layout is not None})}
    return Loaded(
        model, config, folder, kind, device, dtype, ",".join(backends), run_arch, ",".join(fmts) or None, info
    )


def load_model(
    folder: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Transformer:
    """A Hugging Face folder (config.json + model.safetensors, sharded or not) as the float
    reference Transformer (what evaluation compares against)."""
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise CheckpointError(f"{folder}: no config.json; point at a Hugging Face model folder")
    raw = read_json(folder / "config.json")
    text = text_config(raw, str(folder / "config.json"))  # a multimodal folder: its text model's
    config = ModelConfig.from_hf_config(text[1] if text else raw)
    if not any((folder / f).exists() for f in ("model.safetensors.index.json", "model.safetensors")):
        # HF's weight files only: other *.safetensors beside them (the bundled token ids) are not weights
        raise CheckpointError(f"{folder}: no model.safetensors[.index.json]; pickle is not read")
    return build(Checkpoint.open(folder), config, {}, resolve_device(device), dtype, folder)[0]


def tokenizer_files(folder: Path) -> dict[str, Any]:
    """tokenizer.json path and the bos/eos ids from generation_config/config, if present (which
    special tokens frame a prompt is turbopack.textenc's business)."""
    out: dict[str, Any] = {"tokenizer": folder / "tokenizer.json" if (folder / "tokenizer.json").is_file() else None}
    for side in ("generation_config.json", "config.json"):
        if (folder / side).is_file():
            data = json.loads((folder / side).read_text())
            for key in ("bos_token_id", "eos_token_id"):
                if out.get(key) is None and data.get(key) is not None:
                    out[key] = data[key]
    return out
