"""docs/layouts.md == code: decode packed tensors by hand with the documented formulas only.

Nothing here calls unpack: the element -> (tensor, index, bit) formulas of docs/layouts.md are
re-implemented in plain Python and checked against what pack wrote.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from layout_cases import FORMATS, random_neutral

from turbopack.formats.int4 import unpack_nibbles
from turbopack.layouts import get_layout

P = [0, 4, 1, 5, 2, 6, 3, 7]  # docs: element e of a word sits in nibble P[e]


def w4_location(n: int, k: int, tn_size: int, k_pad: int) -> tuple[tuple[int, int, int, int], int]:
    """docs/layouts.md, w4: W[n, k] -> (qweight index [tn, tk, r, j], lowest bit)."""
    tn, r = divmod(n, tn_size)
    tk, c = divmod(k, 64)
    j, e = divmod(c, 8)
    return (tn, tk, r, j), 4 * P[e]


def test_docs_worked_example_w16x64():
    """The worked example of the docs: W[3, 10] of a 16x64 tile, and W[19, 138] of a 40x192
    weight (byte offset 2660, bits 4-7)."""
    assert w4_location(3, 10, 16, 64) == ((0, 0, 3, 1), 4)
    assert w4_location(19, 138, 16, 192) == ((1, 2, 3, 1), 4)
    kt = 192 // 64
    (tn, tk, r, j), bit = w4_location(19, 138, 16, 192)
    word_index = ((tn * kt + tk) * 16 + r) * 8 + j
    assert word_index * 4 + bit // 8 == 2660 and bit % 8 == 4
    # with G = 64 (asym): scale scales[1, 2, 3], zero point zeros[1, 2, 3] = byte 83 of zeros
    layout, fmt = get_layout("w4_t16x64"), FORMATS["w4-asym-g64-bflo"]
    q = random_neutral(fmt, 40, 192, seed=19)
    packed = layout.pack(fmt, q, (40, 192))
    assert torch.equal(packed["scales"][1, 2, 3], q["scales"][19, 2])
    assert packed["zeros"][1, 2, 3] == q["zeros"][19, 2] == packed["zeros"].numpy().tobytes()[83]


@pytest.mark.parametrize("layout_name", ["w4_t16x64", "w4_t64x64"])
def test_w4_every_element_by_hand(layout_name):
    layout = get_layout(layout_name)
    fmt = FORMATS["w4-asym-g32-bflo"]
    n, k = layout.tile_n + 5, 160
    q = random_neutral(fmt, n, k, seed=4)
    packed = layout.pack(fmt, q, (n, k))
    codes = unpack_nibbles(q["qweight"])  # the format's [N, K] codes
    words = packed["qweight"].numpy().view(np.uint32)
    raw = packed["qweight"].numpy().tobytes()  # the file's bytes: little-endian words, C order
    kt = layout.padding((n, k)).k_pad // 64
    for nn in range(n):
        for kk in range(k):
            idx, bit = w4_location(nn, kk, layout.tile_n, kt * 64)
            assert (int(words[idx]) >> bit) & 0xF == int(codes[nn, kk])
            flat_word = ((idx[0] * kt + idx[1]) * layout.tile_n + idx[2]) * 8 + idx[3]
            byte = raw[flat_word * 4 + bit // 8]
            assert (byte >> (bit % 8)) & 0xF == int(codes[nn, kk])
    # scales / zeros: [tn, k // G, r]; zeros = the format's uint8 zero points, as they are
    s, z = packed["scales"], packed["zeros"]
    assert z.dtype == torch.uint8 and z.shape == s.shape
    for nn in range(n):
        for g in range(k // 32):
            tn, r = divmod(nn, layout.tile_n)
            assert torch.equal(s[tn, g, r], q["scales"][nn, g])
            assert int(z[tn, g, r]) == int(q["zeros"][nn, g])
    # the zero points' bytes: offset (tn * (K_pad/G) + g) * TN + r of the tensor
    raw_z = z.numpy().tobytes()
    groups = layout.padding((n, k)).k_pad // 32
    assert all(
        raw_z[((nn // layout.tile_n) * groups + g) * layout.tile_n + nn % layout.tile_n] == int(q["zeros"][nn, g])
        for nn in range(n)
        for g in range(k // 32)
    )


def test_lop3_trick_on_a_packed_word():
    """(w >> 4i) & 0x000F000F | 0x64006400, read as two fp16, is (1024 + q[2i], 1024 + q[2i+1])."""
    layout, fmt = get_layout("w4_t16x64"), FORMATS["w4-sym-g64-bflo"]
    q = random_neutral(fmt, 16, 64, seed=8)
    codes = unpack_nibbles(q["qweight"])
    words = layout.pack(fmt, q, (16, 64))["qweight"].numpy().view(np.uint32)
    for r in range(16):
        for j in range(8):
            w = int(words[0, 0, r, j])
            for i in range(4):
                pair = np.array([((w >> 4 * i) & 0x000F000F) | 0x64006400], np.uint32).view(np.float16)
                assert pair.tolist() == [1024 + int(codes[r, 8 * j + 2 * i]), 1024 + int(codes[r, 8 * j + 2 * i + 1])]


@pytest.mark.parametrize(
    "layout_name,fmt_key",
    [
        ("i8_t16x64", "w8a16"),
        ("i8_t64x64", "w8a16"),
        ("fp8_t16x64_upcast", "fp8-channel"),
        ("i8_rowmajor", "w8a8"),
        ("fp8_rowmajor", "fp8-channel"),
    ],
)
def test_byte_layouts_by_hand(layout_name, fmt_key):
    """Tiled: W[n, k] at qweight[n // TN, k // TK, n % TN, k % TK]; row-major: [n // TN, n % TN, k]."""
    layout, fmt = get_layout(layout_name), FORMATS[fmt_key]
    n, k = layout.tile_n + 3, 70
    q = random_neutral(fmt, n, k, seed=6)
    packed = layout.pack(fmt, q, (n, k))
    got, want = packed["qweight"].view(torch.uint8), q["qweight"].view(torch.uint8)
    tn, tk = layout.tile_n, layout.tile_k
    for nn in range(n):
        for kk in range(k):
            at = (nn // tn, nn % tn, kk) if got.dim() == 3 else (nn // tn, kk // tk, nn % tn, kk % tk)
            assert got[at] == want[nn, kk]
    assert torch.equal(packed["scales"][:n], q["scales"])


def test_docs_worked_example_i8():
    """docs: W[19, 138] of a [40, 192] weight in i8_t16x64 is qweight[1, 2, 3, 10], byte 5322."""
    layout, fmt = get_layout("i8_t16x64"), FORMATS["w8a16"]
    q = random_neutral(fmt, 40, 192, seed=2)
    packed = layout.pack(fmt, q, (40, 192))["qweight"]
    assert packed[1, 2, 3, 10] == q["qweight"][19, 138]
    assert packed.view(torch.uint8).numpy().tobytes()[5322] == q["qweight"].view(torch.uint8)[19, 138]


def test_docs_e4m3_upcast_bit_trick():
    """docs: fp16 bits ((b & 0x80) << 8) | ((b & 0x7F) << 7) times 2^8, bf16 bits
    ((b & 0x80) << 8) | ((b & 0x7F) << 4) times 2^120, equal e4m3 exactly (NaN codes aside)."""
    b = np.arange(256, dtype=np.uint16)
    finite = (b & 0x7F) != 0x7F
    want = torch.from_numpy(b.astype(np.uint8)).view(torch.float8_e4m3fn).float().numpy()
    fp16 = (((b & 0x80) << 8) | ((b & 0x7F) << 7)).astype(np.uint16).view(np.float16).astype(np.float32) * 2.0**8
    bf16 = (
        torch.from_numpy((((b & 0x80) << 8) | ((b & 0x7F) << 4)).astype(np.int16)).view(torch.bfloat16).float().numpy()
        * 2.0**120
    )
    assert np.array_equal(fp16[finite], want[finite]) and np.array_equal(bf16[finite], want[finite])


def test_nvfp4_by_hand_and_the_docs_example():
    """docs: W[n, k] code at qweight[n // 16, k // 64, n % 16, (k % 64) // 2] (low nibble for even
    k), byte ((tn * KT + tk) * 16 + r) * 32 + (k % 64) // 2; its scale at scales[n // 16, k // 64,
    n % 16, (k % 64) // 16]. Example: W[19, 138] of a [40, 192] weight: byte 2661, low nibble;
    its scale is byte 332 of scales."""
    layout, fmt = get_layout("nvfp4_t16x64"), FORMATS["nvfp4"]
    n, k = 40, 192
    q = random_neutral(fmt, n, k, seed=8)
    packed = layout.pack(fmt, q, (n, k))
    codes, scales = fmt.codes(q), q["scales"].view(torch.uint8)
    got_q, got_s = packed["qweight"], packed["scales"].view(torch.uint8)
    kt = 3
    raw_q, raw_s = got_q.numpy().tobytes(), got_s.numpy().tobytes()
    for nn in range(n):
        for kk in range(k):
            tn, r, tk, c = nn // 16, nn % 16, kk // 64, kk % 64
            byte = int(got_q[tn, tk, r, c // 2])
            assert (byte >> (4 * (kk % 2))) & 15 == int(codes[nn, kk])
            assert raw_q[((tn * kt + tk) * 16 + r) * 32 + c // 2] == byte
            assert got_s[tn, tk, r, c // 16] == scales[nn, kk // 16]
            assert raw_s[((tn * kt + tk) * 16 + r) * 4 + c // 16] == int(scales[nn, kk // 16])
    assert ((1 * kt + 2) * 16 + 3) * 32 + 10 // 2 == 2661 and ((1 * kt + 2) * 16 + 3) * 4 + 10 // 16 == 332
    assert raw_q[2661] & 15 == int(codes[19, 138]) and raw_s[332] == int(scales[19, 138 // 16])
    assert torch.equal(packed["global_scale"], q["global_scale"])


def test_docs_e2m1_fp16_bit_trick():
    """docs: fp16 bits ((c & 8) << 12) | ((c & 7) << 9) are the e2m1 value of code c times 2^-14,
    for all 16 codes (codes 0/1 land on fp16 subnormals, which a conversion keeps exactly)."""
    c = np.arange(16, dtype=np.uint16)
    h = (((c & 8) << 12) | ((c & 7) << 9)).astype(np.uint16).view(np.float16).astype(np.float32) * 2.0**14
    from turbopack.formats.nvfp4 import e2m1_table

    assert np.array_equal(h.view(np.uint32), e2m1_table().numpy().view(np.uint32))
