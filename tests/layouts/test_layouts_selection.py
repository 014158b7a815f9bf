"""Architectures, the layout registry and the selection tables."""

from __future__ import annotations

import pytest
import torch
from layout_cases import FORMATS

from turbopack.errors import TurbopackError, UnknownNameError
from turbopack.formats import FormatName
from turbopack.layouts import (
    ARCHS,
    LAYOUTS,
    Choice,
    arch_for_capability,
    detect_arch,
    get_arch,
    get_layout,
    load_table,
    resolve_arch,
    select,
)

# (format key, arch) -> expected layout, or the text its error must contain
EXPECTED = {
    "sm75": {
        "w4-sym-g32-floa": "w4_t16x64",
        "w4-asym-g128-bflo": "error:--scale-dtype float16",
        "w8a16": "i8_t16x64",
        "w8a8": "i8_rowmajor",
        "fp8-channel": "error:use w8a16",
        "nvfp4": "error:use w4a16 --scale-dtype float16",
        "fp8-tensor": "error:use w8a16",
    },
    "sm80": {
        "w4-sym-g32-floa": "w4_t16x64",
        "w4-asym-g128-bflo": "w4_t16x64",
        "w8a16": "i8_t16x64",
        "w8a8": "i8_rowmajor",
        "fp8-channel": "fp8_t16x64_upcast",
        "nvfp4": "nvfp4_t16x64",
        "fp8-tensor": "fp8_t16x64_upcast",
    },
    "sm86": {
        "w4-sym-g32-floa": "w4_t16x64",
        "w4-asym-g128-bflo": "w4_t16x64",
        "w8a16": "i8_t16x64",
        "w8a8": "i8_rowmajor",
        "fp8-channel": "fp8_t16x64_upcast",
        "nvfp4": "nvfp4_t16x64",
        "fp8-tensor": "fp8_t16x64_upcast",
    },
    "sm89": {
        "w4-sym-g32-floa": "w4_t16x64",
        "w4-asym-g128-bflo": "w4_t16x64",
        "w8a16": "i8_t16x64",
        "w8a8": "i8_rowmajor",
        "fp8-channel": "fp8_rowmajor",
        "nvfp4": "nvfp4_t16x64",
        "fp8-tensor": "fp8_rowmajor",
    },
    "sm90": {
        "w4-sym-g32-floa": "w4_t64x64",
        "w4-asym-g128-bflo": "w4_t64x64",
        "w8a16": "i8_t64x64",
        "w8a8": "i8_rowmajor",
        "fp8-channel": "fp8_rowmajor",
        "nvfp4": "nvfp4_t16x64",
        "fp8-tensor": "fp8_rowmajor",
    },
    # Blackwell: the mma.sync-family tiles (no wgmma on either), native FP8 through cuBLASLt
    "sm100": {
        "w4-sym-g32-floa": "w4_t16x64",
        "w4-asym-g128-bflo": "w4_t16x64",
        "w8a16": "i8_t16x64",
        "w8a8": "i8_rowmajor",
        "fp8-channel": "fp8_rowmajor",
        "nvfp4": "nvfp4_t16x64",
        "fp8-tensor": "fp8_rowmajor",
    },
    "sm120": {
        "w4-sym-g32-floa": "w4_t16x64",
        "w4-asym-g128-bflo": "w4_t16x64",
        "w8a16": "i8_t16x64",
        "w8a8": "i8_rowmajor",
        "fp8-channel": "fp8_rowmajor",
        "nvfp4": "nvfp4_t16x64",
        "fp8-tensor": "fp8_rowmajor",
    },
}


def test_expectations_cover_every_arch():
    assert set(EXPECTED) == set(ARCHS.names())


@pytest.mark.parametrize("arch", sorted(EXPECTED))
@pytest.mark.parametrize("fmt_key", sorted(FORMATS))
def test_select_every_format_on_every_arch(arch, fmt_key):
    fmt = FORMATS[fmt_key]
    want = EXPECTED[arch].get(fmt_key)
    if want is None:  # the other w4 variants behave like their scale dtype's representative
        rep = "w4-asym-g128-bflo" if fmt_key.endswith("bflo") else "w4-sym-g32-floa"
        want = EXPECTED[arch][rep]
    if want.startswith("error:"):
        with pytest.raises(TurbopackError, match=want[6:]) as err:
            select(fmt, arch, (192, 576))
        assert arch in str(err.value) and "\n" not in str(err.value)
        return
    choice = select(fmt, arch, (192, 576))
    layout = get_layout(choice.layout)
    assert isinstance(choice, Choice) and choice.layout.value == want
    assert layout.name in get_arch(arch).layouts and fmt.name in layout.format
    assert choice.padding == layout.padding((192, 576)) and choice.why


@pytest.mark.parametrize("arch", ["sm80", "sm86"])
def test_fp8_on_ampere_says_upcast_and_why(arch):
    why = select(FORMATS["fp8-channel"], arch, (64, 64)).why
    assert "upcast" in why and "no FP8 tensor cores" in why and "16-bit" in why


@pytest.mark.parametrize("arch", ["sm89", "sm90", "sm100", "sm120"])
def test_fp8_on_ada_hopper_blackwell_is_native(arch):
    assert "native FP8" in select(FORMATS["fp8-tensor"], arch, (64, 64)).why


def test_tables_are_valid_and_cover_every_format():
    for arch in ARCHS:
        table = load_table(arch)
        named = {r["format"] for r in table["rules"]} | {u["format"] for u in table.get("unsupported", [])}
        assert named == {f.value for f in FormatName}, arch
        for rule in table["rules"]:  # kernel configs live in the tuned table only (one source)
            assert not {"kernel", "overrides"} & set(rule), rule["layout"]


def test_arch_layout_lists_match_tables():
    """An arch offers exactly the layouts its table can select (no dead or missing layouts)."""
    for arch in ARCHS:
        assert {r["layout"] for r in load_table(arch)["rules"]} == {n.value for n in get_arch(arch).layouts}
    assert {n.value for a in ARCHS for n in get_arch(a).layouts} == set(LAYOUTS.names())


def test_the_kernel_plan_is_what_dispatch_looks_up():
    """The packer reports per M bucket the tuned entry dispatch will use for that weight shape."""
    from turbopack.inference.kernels import table
    from turbopack.inference.kernels.config import KernelConfig, KernelName

    plan = table.plan("sm90", "w4_t64x64", 28672, 4096)
    assert plan, "the shipped sm90 table tunes the 8B gate_up shape"
    for bucket, cfg in plan.items():
        assert table.lookup("sm90", "w4_t64x64", 28672, 4096, bucket) == cfg
    other = table.plan("sm90", "w4_t64x64", 1234 * 16, 640)  # untuned shape: the layout's defaults
    assert other == dict(table.load_table("sm90").layouts["w4_t64x64"].default)
    assert table.plan("sm80", "w4_t16x64", 4096, 4096) == {}  # no table tuned for sm80
    # run 18: rows with x per stage, 8 warps (4 warps at two token columns); run 19: the GLU's warps
    assert plan[1] == KernelConfig(KernelName.CUDA, split_k=8, ring_stages=4, variant=6, glu_warps=16)
    assert plan[16] == KernelConfig(KernelName.CUDA, split_k=4, ring_stages=4, variant=6, glu_warps=0)
    assert "untuned" in table.describe({})
    assert "M<=1 cuda(SPLIT_K=8,STAGES=4,VARIANT=6,GLU_WARPS=16); M<=2 " in table.describe(plan)
    # the CUDA decode kernel needs K % 128 == 0: a K = 576 weight reports the Triton default instead
    small = table.plan("sm90", "w4_t64x64", 384, 576, group=64)
    assert all(cfg.kernel is not KernelName.CUDA for cfg in small.values())
    assert small[1] == KernelConfig(KernelName.DEFAULT)
    # the manifest's form, read back (pack --explain's table does)
    assert table.plan_from_json(table.buckets_to_json(plan), "manifest") == plan


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(UnknownNameError, match="sm100, sm120, sm75, sm80, sm86, sm89, sm90"):
        get_arch("sm70")
    with pytest.raises(UnknownNameError, match="fp8_rowmajor.*nvfp4_t16x64.*w4_t16x64"):
        get_layout("w4_t32x32")
    with pytest.raises(UnknownNameError, match="registered: "):
        select(FORMATS["w8a16"], "h100", (16, 16))


def test_arch_spellings_and_data():
    assert get_arch("SM_90") is get_arch("sm90") is resolve_arch("sm90")
    sm90, sm75 = get_arch("sm90"), get_arch("sm75")
    assert (
        sm90.wgmma
        and sm90.tma
        and sm90.fp8_native
        and "H100" in sm90.marketing
        and sm90.mma["wgmma.e4m3"] == "m64nNk32"
    )
    assert not sm75.bf16 and "bf16" not in sm75.mma and get_arch("sm89").fp8_native and not get_arch("sm86").fp8_native
    assert [get_arch(a).capability for a in ARCHS] == sorted(get_arch(a).capability for a in ARCHS)


def test_blackwell_entries_say_what_runs_natively():
    sm100, sm120 = get_arch("sm100"), get_arch("sm120")
    for a in (sm100, sm120):
        assert a.fp8_native and a.fp4_native and a.bf16 and not a.wgmma
        assert a.mma["bf16"] == "m16n8k16" and a.mma["e4m3"] == "m16n8k32"
    assert sm100.tcgen05 and "tcgen05.e2m1.block_scale" in sm100.mma and "B200" in sm100.marketing
    assert not sm120.tcgen05 and not any(k.startswith(("tcgen05", "wgmma")) for k in sm120.mma)
    assert "RTX 5090" in sm120.marketing and sm120.smem_per_sm_kb < sm100.smem_per_sm_kb
    assert (sm100.nvcc_target, sm120.nvcc_target, get_arch("sm90").nvcc_target) == ("100a", "120a", "90a")
    # no wgmma-specific layout (the 64-row tiles) is offered where there is no wgmma
    wgmma_only = {n for n in LAYOUTS if "t64x64" in n}
    for a in ARCHS:
        assert get_arch(a).wgmma or not wgmma_only & {n.value for n in get_arch(a).layouts}, a


def test_capability_mapping():
    assert arch_for_capability(9, 0).name.value == "sm90"
    assert arch_for_capability(8, 7).name.value == "sm86"   # Orin runs sm86 code
    assert arch_for_capability(10, 0).name.value == "sm100"
    assert arch_for_capability(10, 3).name.value == "sm100"  # B300
    assert arch_for_capability(12, 0).name.value == "sm120"
    assert arch_for_capability(12, 1).name.value == "sm120"  # DGX Spark
    with pytest.raises(TurbopackError, match="pass --arch"):
        arch_for_capability(11, 0)   # Thor: no entry, and never sm100's across majors
    with pytest.raises(TurbopackError, match="pass --arch"):
        arch_for_capability(7, 0)


def test_detect_without_gpu_says_pass_arch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TurbopackError, match="pass --arch") as err:
        detect_arch()
    assert "\n" not in str(err.value)
    with pytest.raises(TurbopackError, match="pass --arch"):
        resolve_arch("auto")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_detect_on_gpu():
    major, minor = torch.cuda.get_device_capability(0)
    assert detect_arch().capability[0] == major
