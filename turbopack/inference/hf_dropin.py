"""transformers drop-in: ``turbopack.load_hf(path)`` returns a transformers model whose linear
layers are our QuantLinear modules, so existing transformers code (generate, pipelines) runs our
files unchanged.

    model = turbopack.load_hf("llama-w4-sm90", device="cuda")
    model.generate(ids, max_new_tokens=32)

The model is AutoModelForCausalLM built from config.json (our quantization_config removed) on the
meta device; the runtime's loader decides, per quantized linear, what runs it (turbopack/inference/
loader.py: arch-neutral tensors through the format's reference math on the CPU, or packed for the
local GPU at load; a packed folder through the CPU emulator or, on its own arch, the CUDA kernels;
a packed folder for another arch is refused with the repack command). Every tensor then goes
straight to its place on the device; nothing is ever materialized as a dense float weight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from turbopack.checkpoint import MANIFEST_NAME, Checkpoint, read_manifest, resolve_model
from turbopack.checkpoint.hub import enable_hub
from turbopack.device import resolve_device
from turbopack.errors import CheckpointError, TurbopackError, UnsupportedModelError
from turbopack.inference import loader
from turbopack.inference.model import replace_linears
from turbopack.inference.qlinear import Backend, QuantLinear
from turbopack.layouts import LAYOUTS


def check_arch_compat(config: dict[str, Any], local_arch: str, known_layouts: dict[str, int] | None = None,
                      folder: str | Path = "MODEL") -> None:
    """Refuse (one line, with the repack command) a folder packed for another GPU arch, or with a
    layout version newer than this turbopack knows. Arch-neutral folders are always fine (they
    are packed at load). ``config`` is config.json; ``known_layouts`` {layout: version} defaults
    to the registered layouts."""
    qc = config.get("quantization_config") or {}
    if qc.get("quant_method") != "turbopack" or not qc.get("packed"):
        return
    packed_for = qc.get("arch")
    if packed_for != local_arch:
        raise CheckpointError(
            f"{folder}: packed for {packed_for} but this GPU is {local_arch}; repack it: "
            f"`turbopack pack ARCH_NEUTRAL_FOLDER --arch {local_arch} -o {Path(str(folder)).name}-{local_arch}` "
            f"(ARCH_NEUTRAL_FOLDER: the `turbopack quantize`/`convert` output it was packed from)"
        )
    if known_layouts is None:
        known_layouts = {name: LAYOUTS.get(name).version for name in LAYOUTS.names()}
    for layout, version in (qc.get("layout_version") or {}).items():
        if layout not in known_layouts:
            raise CheckpointError(f"{folder}: layout {layout!r} is unknown to this turbopack; upgrade turbopack")
        if int(version) > known_layouts[layout]:
            raise CheckpointError(f"{folder}: layout {layout} version {version} is newer than this turbopack's "
                                  f"({known_layouts[layout]}); upgrade turbopack or repack with this version")


def _hf_config(config: dict[str, Any]):
    from transformers import AutoConfig  # optional (test extra), and slow to import

    d = {k: v for k, v in config.items() if k != "quantization_config"}
    model_type = d.pop("model_type", None)
    if model_type is None:
        raise UnsupportedModelError("config.json has no model_type; transformers cannot build this model")
    return AutoConfig.for_model(model_type, **d)


def _rebuild_meta_buffers(model: nn.Module, device: torch.device) -> None:
    """Non-persistent buffers (rotary inv_freq) are computed at construction, so a model built on
    meta has none: rebuild those modules from the config on the device."""
    for name, mod in list(model.named_modules()):
        if any(b is not None and b.is_meta for b in mod._buffers.values()) and not isinstance(mod, QuantLinear):
            if not hasattr(mod, "config"):
                raise CheckpointError(f"{name}: buffers left on the meta device and no config to rebuild them from")
            with torch.device(device):
                new = type(mod)(config=mod.config)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)


def load_hf(path: str | Path, device: str | torch.device = "auto", dtype: torch.dtype | None = None, *,
            repack: bool = False, backend: str | Backend | None = None):
    """A transformers ``*ForCausalLM`` running a turbopack folder (quantized or packed; a Hub id
    works too), on the GPU when there is one (``device="auto"``, as ``turbopack.load``).
    ``dtype`` defaults to float32 on the CPU and bfloat16 on a GPU; ``backend`` and
    ``repack`` are the runtime loader's (turbopack.inference.loader.load)."""
    from transformers import AutoModelForCausalLM  # optional (test extra), and slow to import

    enable_hub()
    folder = resolve_model(path)
    device = resolve_device(device)
    dtype = dtype or (torch.float32 if device.type == "cpu" else torch.bfloat16)
    if not (folder / MANIFEST_NAME).is_file():
        raise TurbopackError(f"{folder}: not a turbopack folder (no {MANIFEST_NAME}); plain models load with "
                             f"transformers directly, AWQ/GPTQ/compressed-tensors after `turbopack convert`")
    manifest = read_manifest(folder)
    if device.type == "cuda" and not repack:
        check_arch_compat(Checkpoint.open(folder).config, loader.local_arch(device), folder=folder)
    read_from, kind, plans, _ = loader.plan_modules(folder, manifest, device, repack=repack, arch=None, backend=backend)
    ckpt = Checkpoint.open(read_from)
    hf_config = _hf_config(ckpt.config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    has_bias = {m for m in plans if f"{m}.bias" in ckpt.tensors}
    replace_linears(model, loader.quant_linear_factory(plans, has_bias, dtype, "config.json"))
    loader.fill(model, ckpt, plans, device, dtype)
    if loader.lm_head_is_tied(ckpt, plans):
        loader.tie_lm_head(model)
    _rebuild_meta_buffers(model, device)
    loader.check_complete(model, folder)
    model.turbopack = {"folder": str(folder), "kind": kind, "modules": len(plans),
                       "backends": sorted({p.backend.value for p in plans.values()})}
    return model.eval()
