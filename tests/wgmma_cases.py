"""What the tests of the W4 warpgroup-MMA kernels (test_cuda_w4wg, test_cuda_w4ws) share: the sm90
skip mark, the tolerances (the contract's 16-bit weights bit for bit, fp32 sums: 4e-3 relative for
bf16 y, 1e-3 for fp16), a random quantized weight, and a CPU model of how wgmma reads its B operand
from shared memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

hopper = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                            reason="needs an sm90 GPU")
TOL = {torch.bfloat16: 4e-3, torch.float16: 1e-3}


def w4_weight(n: int, k: int, group: int, sym: bool, dtype: torch.dtype, seed: int):
    """(format, quantized tensors) of a random N x K weight on the GPU, scales in ``dtype``."""
    from turbopack.formats import get_format

    torch.manual_seed(seed)
    fmt = get_format("w4a16", group_size=group, sym=sym, scale_dtype=str(dtype).removeprefix("torch."))
    return fmt, fmt.quantize(torch.randn(n, k, device="cuda"))


def reference_cases(m: int, group: int, sym: bool, dtype: torch.dtype, configs: list):
    """test_matches_reference's cases: for each layout tile (64 rows, then 16), (config, packed weight,
    x, bias or None, a NaN-poisoned y, the contract's y) on N = 1024 + 48 (partial CTAs and a partial
    64-row tile), K = 1152, the configs cycled by the case."""
    from turbopack.inference.kernels import reference

    n, k = 1024 + 48, 1152
    fmt, q = w4_weight(n, k, group, sym, dtype, 100 * m + group + sym)
    for i, tile_n in enumerate((64, 16)):
        packed = reference.pack_w4(q, tile_n)
        x = torch.randn(m, k, device="cuda").to(dtype)
        b = torch.randn(n, device="cuda").to(dtype) if tile_n == 64 else None
        out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
        yield fmt, configs[(m + group + sym + 3 * i) % len(configs)], packed, x, b, out, \
            reference.ref_linear(x, "w4a16", q, b)


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


def replayed_in_a_graph(run, x: torch.Tensor) -> torch.Tensor:
    """run(x) captured in a CUDA graph (after one call outside the capture: built and loaded), then x
    refilled with new values and the graph replayed: the graph's output."""
    run(x)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = run(x)
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    return y


def run_rowmajor_ws(x, packed, shape, bias, out, bm, stages, split, cluster=False):
    """x's per-token codes (int8 or e4m3, the weights' kind: w8a8.quantize_rows), then cuda_i8ws's GEMM."""
    from turbopack.inference.kernels import cuda_i8ws
    from turbopack.inference.kernels.w8a8 import quantize_rows

    w = packed["qweight"]
    q, sx = quantize_rows(x, w.shape[2], fp8=w.dtype == torch.float8_e4m3fn)
    return cuda_i8ws.i8_wgws(q, sx, packed, shape, bias, out, bm=bm, stages=stages, split_k=split, cluster=cluster)


def prmt(a: int, b: int, sel: int) -> int:
    """PTX prmt.b32 (default mode) / __byte_perm: result byte i is byte (sel >> 4 i) & 7 of b:a."""
    src = a | b << 32
    return sum(((src >> 8 * ((sel >> 4 * i) & 7)) & 0xFF) << 8 * i for i in range(4))
