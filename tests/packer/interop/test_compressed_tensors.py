"""compressed-tensors both ways, checked by the compressed-tensors library itself:

* import: checkpoints compressed by the library's own compressors (pack-quantized int4 sym/asym,
  8-bit pack-quantized, int-quantized int8, float-quantized FP8) convert to weights identical to
  the (q - zp) * s they stand for;
* export: our w4a16/w8a16/w8a8/fp8 folders exported for vLLM parse under the library's config
  schema, and the library's decompression of every tensor equals our dequantization exactly; a
  convert of the export gives our tensors back byte for byte.
"""

from __future__ import annotations

import json

import pytest
import torch
from foreign import base
from safetensors.torch import load_file, save_file

from turbopack.checkpoint.quantized import QuantizedCheckpoint
from turbopack.formats import format_from_params
from turbopack.packer.interop.convert import convert
from turbopack.packer.interop.export import export
from turbopack.packer.quantize import quantize

ct = pytest.importorskip("compressed_tensors")
from compressed_tensors.compressors import BaseCompressor  # noqa: E402
from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme  # noqa: E402


def ct_scheme(fmt: str, **w) -> QuantizationScheme:
    acts = None
    if fmt in ("int-quantized", "float-quantized"):
        acts = QuantizationArgs(num_bits=8, type=w["type"], symmetric=True, strategy="token", dynamic=True)
    return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**w), input_activations=acts, format=fmt)


def exact_weight(n, k, w: dict, gen):
    """A weight the scheme represents exactly, with its scale/zero point (what a calibrated
    quantizer would hand the compressor)."""
    bits, sym = w["num_bits"], w.get("symmetric", True)
    if w["type"] == "float":
        q = (torch.randn(n, k, generator=gen) * 40).to(torch.float8_e4m3fn).float()
        s = torch.rand(n, 1, generator=gen) * 0.01 + 1e-3
        return q * s, s, None
    groups = k // w["group_size"] if w["strategy"] == "group" else 1
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = torch.randint(lo, hi + 1, (n, k), generator=gen)
    zp = torch.zeros(n, groups, dtype=torch.int64) if sym else torch.randint(lo, hi + 1, (n, groups), generator=gen)
    s = (torch.rand(n, groups, generator=gen) * 0.02 + 0.001).to(torch.bfloat16 if bits == 4 else torch.float32)
    col = torch.arange(k) // (k // groups)
    wt = (q - zp[:, col]).float() * s.float()[:, col]
    return wt, s, (None if sym else zp.to(torch.int8))


IMPORTS = [
    ("pack-quantized", dict(num_bits=4, type="int", symmetric=True, strategy="group", group_size=32), "w4a16"),
    ("pack-quantized", dict(num_bits=4, type="int", symmetric=False, strategy="group", group_size=32), "w4a16"),
    ("pack-quantized", dict(num_bits=4, type="int", symmetric=True, strategy="channel"), "w4a16"),
    ("pack-quantized", dict(num_bits=8, type="int", symmetric=True, strategy="channel"), "w8a16"),
    ("int-quantized", dict(num_bits=8, type="int", symmetric=True, strategy="channel"), "w8a8"),
    ("float-quantized", dict(num_bits=8, type="float", symmetric=True, strategy="channel"), "fp8"),
]


@pytest.mark.parametrize(
    "storage,w,ours",
    IMPORTS,
    ids=[f"{i[0]}-{i[1]['num_bits']}-{i[1]['strategy']}-{i[1]['symmetric']}" for i in IMPORTS],
)
def test_import_library_written(tiny_llama, tmp_path, storage, w, ours):
    scheme = ct_scheme(storage, **w)
    qcfg = QuantizationConfig(config_groups={"group_0": scheme}, format=storage, ignore=["lm_head"],
                              quantization_status="compressed").model_dump()
    plain, linears = base(tiny_llama, tmp_path / "ct", {**qcfg, "quant_method": "compressed-tensors"})
    gen = torch.Generator().manual_seed(1)
    compressor = BaseCompressor.get_value_from_registry(storage)
    tensors, expect = dict(plain), {}
    for m, (n, k) in linears.items():
        weight, scale, zp = exact_weight(n, k, w, gen)
        sd = {"weight": weight, "weight_scale": scale}
        if zp is not None:
            sd["weight_zero_point"] = zp
        for suffix, t in compressor.compress(sd, scheme).items():
            tensors[f"{m}.{suffix}"] = t.contiguous()
        expect[m] = weight
    save_file(tensors, str(tmp_path / "ct" / "model.safetensors"))
    convert(tmp_path / "ct", tmp_path / "out", progress=False)
    qc = QuantizedCheckpoint(tmp_path / "out")
    assert set(qc.modules) == set(expect)
    for m, wt in expect.items():
        mod = qc.module(m)
        assert mod.format.name.value == ours
        assert torch.equal(mod.dequantize(), wt), m


EXPORTS = [("w4a16", {"group_size": 32}), ("w4a16", {"group_size": 32, "sym": True}), ("w8a16", {}), ("w8a8", {}),
           ("fp8", {}), ("fp8", {"per_tensor": True}), ("nvfp4", {})]


@pytest.fixture(scope="module")
def quantized(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    out = {}
    for name, params in EXPORTS:
        key = name + "".join(f"-{k}{v}" for k, v in params.items())
        out[key] = quantize(tiny_llama, root / key, name, progress=False, **params)
    return out


@pytest.mark.parametrize("name,params", EXPORTS)
def test_export_decompresses_identically(quantized, tmp_path, name, params):
    key = name + "".join(f"-{k}{v}" for k, v in params.items())
    src = quantized[key].out
    export(src, tmp_path / "ct", progress=False)
    qcfg = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    config = QuantizationConfig.model_validate(qcfg)  # the library's own schema
    assert config.ignore == ["lm_head"]
    (scheme,) = config.config_groups.values()
    compressor = BaseCompressor.get_value_from_registry(scheme.format)
    exported = load_file(str(tmp_path / "ct" / "model.safetensors"))
    ours = QuantizedCheckpoint(src)
    for m in ours.modules:
        mod = ours.module(m)
        sd = {k.removeprefix(m + "."): v for k, v in exported.items() if k.startswith(m + ".")}
        assert "weight" not in sd or sd["weight"].dtype in (torch.int8, torch.float8_e4m3fn)
        ref = mod.dequantize()
        if mod.format.name.value == "nvfp4":  # the library decompresses NVFP4 into bf16, always
            native = compressor.decompress(sd, scheme)["weight"]
            assert native.dtype == torch.bfloat16 and torch.equal(native, ref.to(torch.bfloat16)), m
            continue
        # in float32 the product (q - zp) * s is exact on both sides: identical bits
        up = dict(sd, weight_scale=sd["weight_scale"].float())
        assert torch.equal(compressor.decompress(up, scheme)["weight"].float(), ref), m
        # in the stored scale dtype the library rounds that same exact product once
        native = compressor.decompress(sd, scheme)["weight"]
        assert torch.equal(native, ref.to(native.dtype)), m
    for name_ in ours.plain:
        assert torch.equal(exported[name_], ours.plain_tensor(name_))


@pytest.mark.parametrize("w4a4", [False, True], ids=["nvfp4a16", "nvfp4-w4a4"])
def test_import_library_written_nvfp4(tiny_llama, tmp_path, w4a4):
    """NVFP4 compressed by the library (its observer math and compressor) imports as our nvfp4
    byte for byte; a W4A4 checkpoint's static input_global_scale is dropped (weight-only), said so."""
    from compressed_tensors.quantization.quant_scheme import NVFP4, NVFP4A16
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    from turbopack.formats import get_format

    preset = NVFP4 if w4a4 else NVFP4A16
    scheme = QuantizationScheme(targets=["Linear"], format="nvfp4-pack-quantized", **preset)
    qcfg = QuantizationConfig(config_groups={"group_0": scheme}, format="nvfp4-pack-quantized", ignore=["lm_head"],
                              quantization_status="compressed").model_dump(mode="json")
    plain, linears = base(tiny_llama, tmp_path / "ct", {**qcfg, "quant_method": "compressed-tensors"})
    compressor = BaseCompressor.get_value_from_registry("nvfp4-pack-quantized")
    gen, fmt, tensors, expect = torch.Generator().manual_seed(4), get_format("nvfp4"), dict(plain), {}
    for m, (n, k) in linears.items():
        w = torch.randn(n, k, generator=gen) * 0.03
        gs = generate_gparam(w.amin(), w.amax())
        s, _ = calculate_qparams(w.reshape(n, -1, 16).amin(-1), w.reshape(n, -1, 16).amax(-1), scheme.weights,
                                 global_scale=gs)
        out = compressor.compress({"weight": w, "weight_scale": s, "weight_global_scale": gs}, scheme)
        tensors.update({f"{m}.{suffix}": t.contiguous() for suffix, t in out.items()})
        if w4a4:
            tensors[f"{m}.input_global_scale"] = torch.tensor([1234.0])
        expect[m] = fmt.quantize(w, fmt.tensor_stats([w]))
    save_file(tensors, str(tmp_path / "ct" / "model.safetensors"))
    result = convert(tmp_path / "ct", tmp_path / "out", progress=False)
    qc = QuantizedCheckpoint(tmp_path / "out")
    assert set(qc.modules) == set(expect) and result.format == "nvfp4()"
    for m, q in expect.items():
        got = qc.module(m).tensors
        assert got.keys() == q.keys()
        for key in q:
            assert got[key].dtype == q[key].dtype and torch.equal(got[key].view(torch.uint8), q[key].view(torch.uint8))
    dropped = json.loads((tmp_path / "out" / "turbopack.json").read_text())["dropped"]
    assert bool(dropped) == w4a4 and all("weight-only" in why for why in dropped.values())


@pytest.mark.parametrize("name,params", EXPORTS)
def test_export_then_convert_roundtrips(quantized, tmp_path, name, params):
    key = name + "".join(f"-{k}{v}" for k, v in params.items())
    src = quantized[key].out
    export(src, tmp_path / "ct", progress=False)
    convert(tmp_path / "ct", tmp_path / "back", progress=False)
    a, b = QuantizedCheckpoint(src), QuantizedCheckpoint(tmp_path / "back")
    assert set(a.modules) == set(b.modules)
    for m in a.modules:
        ma, mb = a.module(m), b.module(m)
        assert ma.format == mb.format
        for k, v in ma.tensors.items():
            assert torch.equal(v.view(torch.uint8), mb.tensors[k].view(torch.uint8)), (m, k)


def test_export_refuses_packed_and_unknown_target(quantized, tmp_path):
    from turbopack.errors import TurbopackError

    src = quantized["w8a16"].out
    with pytest.raises(TurbopackError, match="unknown export target"):
        export(src, tmp_path / "x", to="gguf", progress=False)
    manifest = json.loads((src / "turbopack.json").read_text())
    fake = tmp_path / "packed"
    fake.mkdir()
    for f in src.iterdir():
        (fake / f.name).write_bytes(f.read_bytes())
    (fake / "turbopack.json").write_text(json.dumps(dict(manifest, kind="packed")))
    with pytest.raises(TurbopackError, match="is a packed folder; export the arch-neutral"):
        export(fake, tmp_path / "y", progress=False)
    assert format_from_params(manifest["format"]).name.value == "w8a16"


@pytest.mark.parametrize("name,params", [("w4a16", {"group_size": 32}), ("fp8", {})])
def test_transformers_loads_export(quantized, tmp_path, name, params):
    """transformers' compressed-tensors loader (the library underneath) reads the export."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    key = name + "".join(f"-{k}{v}" for k, v in params.items())
    export(quantized[key].out, tmp_path / "ct", progress=False)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ct", dtype=torch.float32,
                                                 quantization_config=CompressedTensorsConfig(run_compressed=False))
    ours = QuantizedCheckpoint(quantized[key].out)
    for m in ours.modules:
        mod = ours.module(m)
        ref = mod.dequantize()
        scale_dtype = mod.tensors["scales"].dtype
        assert torch.equal(model.get_submodule(m).weight.float(), ref.to(scale_dtype).float()), m
