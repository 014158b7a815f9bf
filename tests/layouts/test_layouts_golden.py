"""Golden files: the exact packed bytes of one tiny weight per layout are frozen, so the on-disk
format cannot drift silently.

Each ``golden/<case>.safetensors`` holds the arch-neutral input (``in.<suffix>``) and the packed
output (``out.<suffix>``); ``golden/SHA256SUMS.json`` holds the digest of the packed tensors. The
test packs the stored input and requires both to match. After an intended format change (bump the
layout's ``version`` and say so in docs/layouts.md), regenerate with

    TURBOPACK_REGEN_GOLDEN=1 python -m pytest tests/layouts/test_layouts_golden.py
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from layout_cases import FORMATS, assert_bit_equal, random_neutral
from safetensors.torch import load_file, save_file

from turbopack.layouts import LAYOUTS, get_layout

GOLDEN = Path(__file__).parent / "golden"
SUMS = GOLDEN / "SHA256SUMS.json"
REGEN = os.environ.get("TURBOPACK_REGEN_GOLDEN") == "1"

# (case, layout, format key, N, K): tiny, and padded in N (and in K where the layout can be)
CASES = [
    ("w4_t16x64-sym-g32-bf16", "w4_t16x64", "w4-sym-g32-bflo", 24, 96),
    ("w4_t16x64-asym-g128-fp16", "w4_t16x64", "w4-asym-g128-floa", 32, 128),
    ("w4_t64x64-asym-g64-bf16", "w4_t64x64", "w4-asym-g64-bflo", 72, 128),
    ("w4_t64x64-sym-g32-fp16", "w4_t64x64", "w4-sym-g32-floa", 16, 64),
    ("i8_t16x64-w8a16", "i8_t16x64", "w8a16", 24, 96),
    ("i8_t64x64-w8a16", "i8_t64x64", "w8a16", 24, 96),
    ("i8_rowmajor-w8a8", "i8_rowmajor", "w8a8", 20, 40),
    ("fp8_t16x64_upcast-channel", "fp8_t16x64_upcast", "fp8-channel", 24, 96),
    ("fp8_rowmajor-tensor", "fp8_rowmajor", "fp8-tensor", 20, 40),
    ("fp8_rowmajor-channel", "fp8_rowmajor", "fp8-channel", 16, 32),
    ("nvfp4_t16x64", "nvfp4_t16x64", "nvfp4", 24, 80),
]


def digest(packed: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for suffix in sorted(packed):
        t = packed[suffix].contiguous()
        h.update(f"{suffix}|{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}|".encode())
        h.update(
            t.view(torch.uint8).numpy().tobytes()
            if t.dtype.itemsize == 1
            else t.view(torch.uint8).reshape(-1).numpy().tobytes()
        )
    return h.hexdigest()


def test_every_layout_has_a_golden_case():
    assert {c[1] for c in CASES} == set(LAYOUTS.names())


@pytest.mark.parametrize("case,layout_name,fmt_key,n,k", CASES, ids=[c[0] for c in CASES])
def test_golden_bytes(case, layout_name, fmt_key, n, k):
    layout, fmt = get_layout(layout_name), FORMATS[fmt_key]
    path = GOLDEN / f"{case}.safetensors"
    sums = json.loads(SUMS.read_text()) if SUMS.exists() else {}
    if REGEN:
        q = random_neutral(fmt, n, k, seed=sum(map(ord, case)))
        packed = layout.pack(fmt, q, (n, k))
        GOLDEN.mkdir(exist_ok=True)
        save_file({**{f"in.{s}": t for s, t in q.items()}, **{f"out.{s}": t for s, t in packed.items()}}, str(path),
                  metadata={"layout": layout_name, "format": json.dumps(fmt.params()), "shape": f"{n},{k}"})
        sums[case] = digest(packed)
        SUMS.write_text(json.dumps(dict(sorted(sums.items())), indent=2) + "\n")
    assert path.exists() and case in sums, f"{path.name} missing: run with TURBOPACK_REGEN_GOLDEN=1 once"
    stored = load_file(str(path))
    q = {key[3:]: t for key, t in stored.items() if key.startswith("in.")}
    want = {key[4:]: t for key, t in stored.items() if key.startswith("out.")}
    assert digest(want) == sums[case], f"{path.name} does not match SHA256SUMS.json"
    packed = layout.pack(fmt, q, (n, k))
    assert_bit_equal(
        packed,
        want,
        f"{case}: packed bytes changed; if intended, bump the layout version, update docs/layouts.md and regenerate",
    )
    assert digest(packed) == sums[case]
    assert_bit_equal(layout.unpack(fmt, want, (n, k)), q, case)
