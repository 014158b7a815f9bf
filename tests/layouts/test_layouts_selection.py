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
    LayoutName,
    arch_for_capability,
    detect_arch,
    get_arch,
    get_layout,
    load_table,
    resolve_arch,
    select,
    selection,
)

# (format key, arch) -> expected layout, or the text its error must contain
EXPECTED = {
    "sm75": {
        "w4-sym-g32-floa": "w4_t16x64",
        "w4-asym-g128-bflo": "error:--scale-dtype float16",
        "w8a16": "i8_t16x64",
        "w8a8": "i8_rowmajor",
        "fp8-channel": "error:use w8a16",
        "fp8-tensor": "error:use w8a16",
    },
    "sm80": {
        "w4-sym-g32-floa": "w4_t16x64",
        "w4-asym-g128-bflo": "w4_t16x64",
        "w8a16": "i8_t16x64",
        "w8a8": "i8_rowmajor",
        "fp8-channel": "fp8_t16x64_upcast",
        "fp8-tensor": "fp8_t16x64_upcast",
    },
    "sm86": {
        "w4-sym-g32-floa": "w4_t16x64",
        "w4-asym-g128-bflo": "w4_t16x64",
        "w8a16": "i8_t16x64",
        "w8a8": "i8_rowmajor",
        "fp8-channel": "fp8_t16x64_upcast",
        "fp8-tensor": "fp8_t16x64_upcast",
    },
    "sm89": {
        "w4-sym-g32-floa": "w4_t16x64",
        "w4-asym-g128-bflo": "w4_t16x64",
        "w8a16": "i8_t16x64",
        "w8a8": "i8_rowmajor",
        "fp8-channel": "fp8_rowmajor",
        "fp8-tensor": "fp8_rowmajor",
    },
    "sm90": {
        "w4-sym-g32-floa": "w4_t64x64",
        "w4-asym-g128-bflo": "w4_t64x64",
        "w8a16": "i8_t64x64",
        "w8a8": "i8_rowmajor",
        "fp8-channel": "fp8_rowmajor",
        "fp8-tensor": "fp8_rowmajor",
    },
}
TRITON_KEYS = {"BLOCK_N", "BLOCK_K", "SPLIT_K", "num_warps", "num_stages"}


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
    for m in (1, 16, 17, 4096):
        cfg = choice.kernel_for(m)
        assert set(cfg) == TRITON_KEYS or set(cfg) == {"op"}


@pytest.mark.parametrize("arch", ["sm80", "sm86"])
def test_fp8_on_ampere_says_upcast_and_why(arch):
    why = select(FORMATS["fp8-channel"], arch, (64, 64)).why
    assert "upcast" in why and "no FP8 tensor cores" in why and "16-bit" in why


@pytest.mark.parametrize("arch", ["sm89", "sm90"])
def test_fp8_on_ada_hopper_is_native(arch):
    assert "native FP8" in select(FORMATS["fp8-tensor"], arch, (64, 64)).why


def test_tables_are_valid_and_cover_every_format():
    for arch in ARCHS:
        table = load_table(arch)
        named = {r["format"] for r in table["rules"]} | {u["format"] for u in table.get("unsupported", [])}
        assert named == {f.value for f in FormatName}, arch
        for rule in table["rules"]:
            assert set(rule["kernel"]) >= {"decode", "prefill"}


def test_arch_layout_lists_match_tables():
    """An arch offers exactly the layouts its table can select (no dead or missing layouts)."""
    for arch in ARCHS:
        assert {r["layout"] for r in load_table(arch)["rules"]} == {n.value for n in get_arch(arch).layouts}
    assert {n.value for a in ARCHS for n in get_arch(a).layouts} == set(LAYOUTS.names())


def test_overrides_by_shape_and_batch():
    rule = {"format": "w4a16", "layout": "w4_t16x64", "why": "x",
            "kernel": {"decode": {"BLOCK_N": 64, "SPLIT_K": 4}, "prefill": {"BLOCK_N": 128, "SPLIT_K": 1}},
            "overrides": [{"n": 28672, "k": 4096, "m_max": 16, "kernel": {"SPLIT_K": 8}},
                          {"n": 28672, "k": 4096, "m_max": 64, "kernel": {"BLOCK_N": 32}},
                          {"n": 4096, "kernel": {"BLOCK_N": 16}}]}
    kernel = selection._kernel({"decode_m_max": 16}, rule, (28672, 4096))
    from turbopack.layouts import Padding
    c = Choice(LayoutName.W4_T16X64, kernel, "x", Padding(28672, 4096, 28672, 4096))
    assert c.kernel_for(1) == {"BLOCK_N": 64, "SPLIT_K": 8}
    assert c.kernel_for(32) == {"BLOCK_N": 32, "SPLIT_K": 1}
    assert c.kernel_for(1000) == {"BLOCK_N": 128, "SPLIT_K": 1}
    other = Choice(
        LayoutName.W4_T16X64, selection._kernel({}, rule, (4096, 11008)), "x", Padding(4096, 11008, 4096, 11008)
    )
    assert other.kernel_for(1) == {"BLOCK_N": 16, "SPLIT_K": 4} and other.kernel_for(5000)["BLOCK_N"] == 16
    kernel["decode"]["BLOCK_N"] = 0  # callers get copies: the cached table is untouched
    assert load_table("sm80")["rules"][0]["kernel"]["decode"]["BLOCK_N"] != 0


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(UnknownNameError, match="sm75, sm80, sm86, sm89, sm90"):
        get_arch("sm70")
    with pytest.raises(UnknownNameError, match="fp8_rowmajor.*w4_t16x64"):
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


def test_capability_mapping():
    assert arch_for_capability(9, 0).name.value == "sm90"
    assert arch_for_capability(8, 7).name.value == "sm86"   # Orin runs sm86 code
    with pytest.raises(TurbopackError, match="pass --arch"):
        arch_for_capability(10, 0)
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
