"""The NVFP4 export's bytes and config, frozen without the compressed-tensors library: tensor
names, dtypes and shapes of compressed-tensors' nvfp4-pack-quantized, the bytes of the format's
golden weight (tests/formats/golden/nvfp4.safetensors) under those names, and the config block."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from turbopack.formats import get_format
from turbopack.packer.interop.export import NVFP4_NAMES, export_specs, export_tensors, quantization_config

GOLDEN = Path(__file__).parents[2] / "formats" / "golden" / "nvfp4.safetensors"


def test_export_tensors_are_the_golden_bytes_under_compressed_tensors_names():
    stored = load_file(str(GOLDEN))
    fmt, w = get_format("nvfp4"), stored["in.weight"]
    n, k = w.shape
    out = export_tensors(fmt, fmt.quantize(w, fmt.tensor_stats([w])), (n, k))
    assert {key: (t.dtype, tuple(t.shape)) for key, t in out.items()} == {
        "weight_packed": (torch.uint8, (n, k // 2)),
        "weight_scale": (torch.float8_e4m3fn, (n, k // 16)),
        "weight_global_scale": (torch.float32, (1,)),
    }
    for ours, theirs in NVFP4_NAMES.items():
        assert torch.equal(out[theirs].view(torch.uint8), stored[f"out.{ours}"].view(torch.uint8)), theirs
    entries = export_specs(fmt, "m", (n, k))
    assert [(e.name, e.dtype, tuple(e.shape)) for e in entries] == [
        (f"m.{key}", t.dtype, tuple(t.shape)) for key, t in out.items()
    ]


def test_export_config_is_compressed_tensors_nvfp4a16():
    cfg = quantization_config(get_format("nvfp4"), ["lm_head"])
    assert cfg["format"] == "nvfp4-pack-quantized" and cfg["quant_method"] == "compressed-tensors"
    (group,) = cfg["config_groups"].values()
    assert group["format"] == "nvfp4-pack-quantized" and group["input_activations"] is None
    assert group["weights"] == {"num_bits": 4, "type": "float", "symmetric": True, "strategy": "tensor_group",
                                "group_size": 16, "dynamic": False, "actorder": None, "observer": "minmax",
                                "scale_dtype": "torch.float8_e4m3fn"}


def test_inspect_reads_an_nvfp4_export(tiny_llama, tmp_path):
    """`inspect` on the export: each linear's [N, K] (two codes per uint8) and all its bytes."""
    from turbopack.packer.inspect import inspect
    from turbopack.packer.interop.export import export
    from turbopack.packer.quantize import quantize

    quantize(tiny_llama, tmp_path / "q", "nvfp4", progress=False)
    export(tmp_path / "q", tmp_path / "ct", progress=False)
    (rep,) = inspect(tmp_path / "ct")
    original = load_file(str(tiny_llama / "model.safetensors"))
    rows = {r["name"]: r for r in rep.as_dict()["tensors"]}
    assert sum(r["dtype"].startswith("float4") for r in rows.values()) == 14
    assert rep.formats == ["compressed-tensors nvfp4-pack-quantized: float4 group 16 + global scale"]
    for name, w in original.items():
        module = name.removesuffix(".weight")
        if module in rows and rows[module]["dtype"].startswith("float4"):
            n, k = w.shape
            assert rows[module]["shape"] == [n, k] and rows[module]["bytes"] == n * k // 2 + n * k // 16 + 4
