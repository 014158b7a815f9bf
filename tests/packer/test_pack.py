"""`pack` end to end on tiny random models: per-arch folders, manifest/config/metadata, exact
round trip to the arch-neutral source, streaming paths giving the same bytes, bad input refused
before anything is written, and atomicity when packing fails half way."""

from __future__ import annotations

import json

import pytest
import torch
from packhelp import (  # noqa: F401
    CASE_IDS,
    CASES,
    bits_equal,
    emulated_model,
    manifest,
    model_dir,
    needs_layouts,
    quantized,
    read_all,
    reference_model,
    shard_hashes,
    temp_leftovers,
    unpack_folder,
)
from safetensors import safe_open

from turbopack.checkpoint.quantized import QuantizedCheckpoint
from turbopack.errors import CheckpointError, OutputExistsError, TurbopackError, UnknownNameError

pytestmark = needs_layouts


def pack(*args, **kwargs):
    from turbopack.packer.pack import pack as run

    return run(*args, progress=False, **kwargs)


@pytest.mark.parametrize("fmt_name,params", CASES, ids=CASE_IDS)
def test_two_archs_differ_and_unpack_exactly(quantized, tmp_path, fmt_name, params):
    src = quantized("base", fmt_name, params)
    qc = QuantizedCheckpoint(src)
    out = tmp_path / "packed"
    res = pack(src, out, arch=("sm80", "sm90"), explain=True)
    assert res.folders == [out / "sm80", out / "sm90"] and not (out / "turbopack.json").exists()
    assert {(r["module"], r["arch"]) for r in res.explain} == {(m, a) for m in qc.modules for a in ("sm80", "sm90")}
    m80, m90 = manifest(out / "sm80"), manifest(out / "sm90")
    assert (m80["kind"], m80["arch"], m90["arch"], m80["tp"]) == ("packed", "sm80", "sm90", 1)
    assert set(shard_hashes(out / "sm80").values()).isdisjoint(shard_hashes(out / "sm90").values())
    t80, t90 = read_all(out / "sm80"), read_all(out / "sm90")
    layouts80 = {m: i["layout"] for m, i in m80["tensors"].items()}
    if layouts80 != {m: i["layout"] for m, i in m90["tensors"].items()}:
        assert any(t80.get(n) is None or not bits_equal(t80[n], t90[n]) for n in t90)
    for folder in (out / "sm80", out / "sm90"):
        for module, tensors in unpack_folder(folder).items():
            want = qc.module(module).tensors
            assert tensors.keys() == want.keys(), module
            assert all(bits_equal(tensors[k], want[k]) for k in want), module
        plain = read_all(folder)
        assert all(bits_equal(plain[n], qc.plain_tensor(n)) for n in qc.plain)
    for folder, m, layouts in ((out / "sm80", m80, layouts80),):
        qcfg = json.loads((folder / "config.json").read_text())["quantization_config"]
        assert qcfg["packed"] is True and qcfg["arch"] == "sm80" and qcfg["tp"] == 1
        assert qcfg["layouts"] == layouts and qcfg["format"] == fmt_name and qcfg["layout_version"]
        info = next(iter(m["tensors"].values()))
        assert {"shape", "padding", "kernel", "why", "layout", "layout_version", "tensors", "format"} <= info.keys()
        assert m["source_manifest_sha256"] and (folder / "generation_config.json").exists()
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            meta = f.metadata()
        assert meta["arch"] == "sm80" and meta["format"] == fmt_name
        assert set(json.loads(meta["layouts"])) == set(layouts.values()) and meta["turbopack_version"]


def test_single_arch_writes_out_itself_and_padding_is_recorded(quantized, tmp_path):
    src = quantized("base", "w4a16", {"group_size": 32})
    res = pack(src, tmp_path / "p", arch="sm90")
    assert res.folders == [tmp_path / "p"]
    m = manifest(tmp_path / "p")
    down = m["tensors"]["model.layers.0.mlp.down_proj"]
    assert down["shape"] == [64, 96] and down["padding"]["k"] == 96 and down["padding"]["k_pad"] % 64 == 0


def test_verify_against_passes(quantized, tmp_path):
    from turbopack.packer.verify import verify

    src = quantized("base", "w4a16", {"group_size": 32})
    pack(src, tmp_path / "p", arch=("sm80", "sm90"))
    report = verify(tmp_path / "p", against=src)
    assert report.ok and len(report.folders) == 2
    n = len(QuantizedCheckpoint(src).modules) + len(QuantizedCheckpoint(src).plain)
    assert all(f.compared == n and f.shards == 1 for f in report.folders)


@pytest.mark.parametrize("fmt_name,params", [CASES[0], CASES[5]], ids=[CASE_IDS[0], CASE_IDS[5]])
def test_streaming_paths_give_the_same_bytes(model_dir, quantized, tmp_path, fmt_name, params):
    """Row-chunked packing, small shards and quantize-while-packing all equal the plain path."""
    src = quantized("base", fmt_name, params)
    pack(src, tmp_path / "a", arch="sm90")
    pack(src, tmp_path / "b", arch="sm90", chunk_bytes=1)  # every module in chunks of one N tile
    assert shard_hashes(tmp_path / "a") == shard_hashes(tmp_path / "b")
    pack(model_dir("base"), tmp_path / "c", arch="sm90", format=fmt_name, **params)
    assert shard_hashes(tmp_path / "a") == shard_hashes(tmp_path / "c")
    assert manifest(tmp_path / "c")["source_manifest_sha256"] is None
    pack(src, tmp_path / "d", arch="sm90", max_shard_bytes=20_000)
    assert len(manifest(tmp_path / "d")["shards"]) > 1 and (tmp_path / "d" / "model.safetensors.index.json").exists()
    a, d = read_all(tmp_path / "a"), read_all(tmp_path / "d")
    assert a.keys() == d.keys() and all(bits_equal(a[n], d[n]) for n in a)


def test_bad_input_is_refused_before_writing(model_dir, quantized, tmp_path):
    src = quantized("base", "w8a16", {})
    out = tmp_path / "p"
    with pytest.raises(UnknownNameError, match="sm90"):  # the message lists the known archs
        pack(src, out, arch=("sm90", "sm12"))
    with pytest.raises(CheckpointError, match="--format"):
        pack(model_dir("base"), out, arch="sm90")
    with pytest.raises(TurbopackError, match="already quantized"):
        pack(src, out, arch="sm90", format="w4a16")
    assert not out.exists() and temp_leftovers(tmp_path) == []
    pack(src, out, arch="sm90")
    with pytest.raises(OutputExistsError):
        pack(src, out, arch="sm90")
    with pytest.raises(CheckpointError, match="packed folder"):
        pack(out, tmp_path / "again", arch="sm90")


def _fail_on_third_pack(monkeypatch, arch: str, fmt):
    from turbopack.layouts import get_layout
    from turbopack.layouts.selection import select

    layout_cls = type(get_layout(select(fmt, arch, (64, 64)).layout))
    real, calls = layout_cls.pack, []

    def failing(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected failure on the 3rd module")
        return real(self, *a, **k)

    monkeypatch.setattr(layout_cls, "pack", failing)
    return calls


def test_failure_mid_pack_leaves_nothing(quantized, tmp_path, monkeypatch):
    from turbopack.formats import get_format

    src = quantized("base", "w4a16", {"group_size": 32})
    pack(src, tmp_path / "old", arch="sm90")
    before = shard_hashes(tmp_path / "old")
    calls = _fail_on_third_pack(monkeypatch, "sm90", get_format("w4a16", group_size=32))
    with pytest.raises(RuntimeError, match="injected"):
        pack(src, tmp_path / "new", arch="sm90")
    assert len(calls) == 3 and not (tmp_path / "new").exists()
    with pytest.raises(RuntimeError, match="injected"):  # --force: the old folder survives a failure
        calls.clear()
        pack(src, tmp_path / "old", arch="sm90", force=True)
    assert shard_hashes(tmp_path / "old") == before and temp_leftovers(tmp_path) == []


def test_pack_module_matches_the_folder(quantized, tmp_path):
    """The runtime packs at load time with pack_module: same bytes as the packed folder."""
    from turbopack.layouts.packing import pack_module

    src = quantized("base", "w4a16", {"group_size": 32})
    pack(src, tmp_path / "p", arch="sm80")
    qc, tensors, m = QuantizedCheckpoint(src), read_all(tmp_path / "p"), manifest(tmp_path / "p")
    for module in qc.modules:
        qm = qc.module(module)
        pm = pack_module(qm.format, qm.tensors, qm.shape, "sm80", name=module)
        assert pm.layout.name.value == m["tensors"][module]["layout"]
        for suffix, t in pm.tensors.items():
            assert bits_equal(t, tensors[f"{module}.{suffix}"]), (module, suffix)
        assert bits_equal(qm.tensors["qweight"], qc.module(module).tensors["qweight"])  # input untouched


def test_explain_lists_every_module_with_why(quantized, tmp_path):
    src = quantized("base", "fp8", {})
    res = pack(src, tmp_path / "p", arch=("sm80", "sm90"), explain=True)
    by_arch = {(r["module"], r["arch"]): r for r in res.explain}
    assert len(by_arch) == 2 * len(QuantizedCheckpoint(src).modules)
    row = by_arch[("model.layers.0.self_attn.q_proj", "sm80")]
    assert row["why"] and row["kernel"] is not None and row["padding"]["n"] == 64
    assert json.loads(json.dumps(res.as_dict()))["explain"]  # JSON-able as is


@pytest.mark.parametrize("fmt_name,params", CASES, ids=CASE_IDS)
def test_emulated_packed_logits_match_the_reference(quantized, tmp_path, fmt_name, params):
    """The model run on packed tensors through the layouts' emulator gives the logits of the
    model run on the arch-neutral tensors with the format's math (as each layout's kernel computes
    it: see packhelp.reference_model), and stays near the plain dequantized model."""
    src = quantized("base", fmt_name, params)
    pack(src, tmp_path / "p", arch=("sm80", "sm90"))
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    dequantized = reference_model(src, None)
    with torch.no_grad():
        loose = dequantized(ids)
        for arch in ("sm80", "sm90"):
            folder = tmp_path / "p" / arch
            ref, got = reference_model(src, folder)(ids), emulated_model(folder)(ids)
            err = ((got - ref).abs().max() / ref.abs().max()).item()
            assert err < 1e-4, f"{arch}: relative error {err:.2e} against the layout's numeric contract"
            err = ((got - loose).abs().max() / loose.abs().max()).item()
            assert err < 1e-1, f"{arch}: relative error {err:.2e} against the dequantized weights"
