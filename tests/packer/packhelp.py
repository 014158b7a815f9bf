"""Shared helpers for the packer tests: tiny models, quantized folders, reading packed folders.

Not a conftest (tests/conftest.py owns that name); test modules import it (pytest puts this
folder on sys.path). Tests that need the layouts package skip only while it is not there.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
LAYOUTS_PRESENT = (
    ROOT / "turbopack" / "layouts" / "__init__.py"
).exists() or "turbopack.layouts.selection" in sys.modules
needs_layouts = pytest.mark.skipif(not LAYOUTS_PRESENT, reason="turbopack/layouts/__init__.py not written yet")

#: (format, params) of every format the packer must handle; group 32 divides K = 64 and 96
CASES = [("w4a16", {"group_size": 32}), ("w4a16", {"group_size": 32, "sym": True}), ("w8a16", {}),
         ("w8a8", {}), ("fp8", {}), ("fp8", {"per_tensor": True})]
CASE_IDS = ["w4a16-asym", "w4a16-sym", "w8a16", "w8a8", "fp8", "fp8-tensor"]
#: "base": intermediate 96 (K of down_proj is not a multiple of 64); "tp": intermediate 192, so a
#: rank's K slice of down_proj (96) holds whole groups of 32 but not of 64
MODELS = {"base": ("llama", {}), "tp": ("llama", {"intermediate_size": 192}),
          "qwen2_tp": ("qwen2", {"intermediate_size": 192})}


def _root_conftest():
    spec = importlib.util.spec_from_file_location("_turbopack_tests_root_conftest", ROOT / "tests" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """name -> folder of a tiny random HF model (see MODELS), built once."""
    cache: dict[str, Path] = {}
    make = _root_conftest().make_tiny_model

    def get(name: str) -> Path:
        if name not in cache:
            arch, dims = MODELS[name]
            cache[name] = make(tmp_path_factory.mktemp("models") / name, arch=arch, **dims)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def quantized(model_dir, tmp_path_factory):
    """(model, format, params) -> quantized folder, built once."""
    from turbopack.packer.quantize import quantize

    cache: dict[tuple, Path] = {}

    def get(model: str, fmt: str, params: dict) -> Path:
        key = (model, fmt, tuple(sorted(params.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp("quantized") / f"{model}-{fmt}"
            quantize(model_dir(model), out, fmt, progress=False, **params)
            cache[key] = out
        return cache[key]

    return get


def manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / "turbopack.json").read_text())


def read_all(folder: Path) -> dict[str, torch.Tensor]:
    from turbopack.checkpoint import Checkpoint

    ckpt = Checkpoint.open(folder)
    return {n: ckpt.read(n) for n in ckpt.tensors}


def unpack_folder(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """module -> its arch-neutral tensors, unpacked from a packed folder with its layouts."""
    from turbopack.formats import format_from_params
    from turbopack.layouts import get_layout

    m, tensors = manifest(folder), read_all(folder)
    out = {}
    for module, info in m["tensors"].items():
        packed = {t.removeprefix(module + "."): tensors[t] for t in info["tensors"]}
        out[module] = get_layout(info["layout"]).unpack(
            format_from_params(info["format"]), packed, tuple(info["shape"])
        )
    return out


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    )


def shard_hashes(folder: Path) -> dict[str, str]:
    return {k: v["sha256"] for k, v in manifest(folder)["shards"].items()}


def temp_leftovers(parent: Path) -> list[str]:
    from turbopack.checkpoint.output import TEMP_PREFIX

    return [p.name for p in Path(parent).iterdir() if p.name.startswith(TEMP_PREFIX)]


class _Linear(torch.nn.Module):
    """A linear computed by ``fn(x)``; holds no parameters, so the plain state dict loads around it."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _model(folder: Path, factory) -> torch.nn.Module:
    from turbopack.checkpoint import Checkpoint
    from turbopack.inference.model import ModelConfig, build_model, replace_linears

    cfg = ModelConfig.from_hf_config(json.loads((Path(folder) / "config.json").read_text()))
    model = build_model(cfg, device="cpu", dtype=torch.float32)
    ckpt = Checkpoint.open(folder)
    owned = {t for info in manifest(folder)["tensors"].values() for t in info["tensors"]}
    plain = {n: ckpt.read(n).float() for n in ckpt.tensors if n not in owned}
    replaced = replace_linears(model, lambda name, lin: factory(name, plain.get(name + ".bias")))
    missing, unexpected = model.load_state_dict({k: v for k, v in plain.items() if not k.endswith(".bias")
                                                 or k.removesuffix(".bias") not in replaced}, strict=False)
    if cfg.tie_word_embeddings:  # a tied lm_head (Gemma) is the embedding, loaded under its name
        missing = [k for k in missing if k != "lm_head.weight"]
    assert not unexpected and all(k.rpartition(".")[0] in replaced for k in missing), (missing, unexpected)
    return model.eval()


def emulated_model(packed: Path) -> torch.nn.Module:
    """The reference model with every packed linear run by layouts.emulate.emulate_linear."""
    from turbopack.formats import format_from_params
    from turbopack.layouts import get_layout
    from turbopack.layouts.emulate import emulate_linear

    m, tensors = manifest(packed), read_all(packed)

    def factory(name, bias):
        info = m["tensors"].get(name)
        if info is None:
            return None
        fmt, layout, shape = format_from_params(info["format"]), get_layout(info["layout"]), tuple(info["shape"])
        p = {t.removeprefix(name + "."): tensors[t] for t in info["tensors"]}
        return _Linear(lambda x: emulate_linear(x, fmt, layout, p, shape, bias=bias))

    return _model(packed, factory)


def reference_model(quantized: Path, packed: Path | None) -> torch.nn.Module:
    """The model on the arch-neutral tensors, computed as each packed module's kernel promises
    (layouts.emulate.reference_linear: the format's math, weights-only for fp8 upcast), or with
    packed None on plain dequantized weights."""
    import torch.nn.functional as F

    from turbopack.checkpoint.quantized import QuantizedCheckpoint
    from turbopack.layouts import get_layout
    from turbopack.layouts.emulate import reference_linear

    qc = QuantizedCheckpoint(quantized)
    layouts = {n: get_layout(i["layout"]) for n, i in manifest(packed)["tensors"].items()} if packed else {}

    def factory(name, bias):
        if name not in qc.modules:
            return None
        qm = qc.module(name)
        if packed is None:
            w = qm.dequantize()
            return _Linear(lambda x: F.linear(x, w.to(x.dtype), None if bias is None else bias.to(x.dtype)))
        return _Linear(lambda x: reference_linear(x, qm.format, layouts[name], qm.tensors, bias))

    return _model(quantized, factory)
