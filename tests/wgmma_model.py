"""A CPU model of how wgmma reads its B operand from shared memory, shared by the tests of the W4
warpgroup-MMA kernels (test_cuda_w4wg, test_cuda_w4ws)."""

from __future__ import annotations

import numpy as np


def wgmma_b(smem16: np.ndarray, start: int, n: int) -> np.ndarray:
    """B (16 x n, uint16) as wgmma reads it from a K-major operand in the 128-byte swizzle: row n of
    the operand at start + (n // 8) * 1024 (SBO) + (n % 8) * 128, k element e at 2e bytes; then
    address bits [4:6] XOR bits [7:9] (PTX ISA, shared memory matrix layout, 128B swizzling)."""
    b = np.zeros((16, n), np.uint16)
    for t in range(n):
        for e in range(16):
            addr = start + (t // 8) * 1024 + (t % 8) * 128 + 2 * e
            addr ^= ((addr >> 7) & 7) << 4
            b[e, t] = smem16[addr // 2]
    return b


def a_fragment_k(u: int) -> np.ndarray:
    """The logical k (in a 64-k tile) of wgmma step u's virtual k 0..15 as the A fragment holds it:
    kk = 2c + e -> 16c + 4u + e, kk = 8 + 2c + e -> 16c + 4u + 2 + e (w4_mma.cuh decode_words; mma's
    A fragment k columns 2c, 2c + 8; w4.cu's K order)."""
    kk = np.arange(16)
    c, e, hi = (kk % 8) // 2, kk % 2, kk // 8
    return 16 * c + 4 * u + 2 * hi + e
