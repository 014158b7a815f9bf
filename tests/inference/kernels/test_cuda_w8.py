"""The CUDA C++ 8-bit decode kernel (csrc/w8.cu) on a GPU: int8 and e4m3 codes in the tiled
(i8_t{16,64}x64, fp8_t16x64_upcast) and row-major (fp8_rowmajor) byte layouts match the
weights-only reference y = fp32(sum x16 * q) * s on fresh random inputs, within the 16-bit rounding
of y (5e-3 relative in bf16, 1e-3 in fp16: measured on the device, see docs/kernels.md), and its
code conversion is exact for every byte value (one-hot activations read single codes back)."""

from __future__ import annotations

import functools

import pytest
import torch

from turbopack.formats import get_format
from turbopack.inference.kernels import cuda_w8, reference

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
TOL = {torch.bfloat16: 5e-3, torch.float16: 1e-3}
#: (format, per-tensor scale, tile_n, tile_k): tile_k None is row-major
CASES = [("w8a16", False, 64, 64), ("w8a16", False, 16, 64), ("fp8", False, 16, None), ("fp8", True, 16, None),
         ("fp8", False, 16, 64)]


def _quantized(fmt_name: str, per_tensor: bool, n: int, k: int, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    fmt = get_format(fmt_name, **({"per_tensor": True} if per_tensor else {}))
    return fmt.quantize(torch.randn(n, k, device="cuda") * 0.02)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("fmt_name,per_tensor,tile_n,tile_k", CASES)
@pytest.mark.parametrize("m", [1, 3, 8, 9, 16])
@pytest.mark.parametrize("split,stages", [(1, 4), (3, 6), (0, 8)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decode_matches_the_weights_only_reference(fmt_name, per_tensor, tile_n, tile_k, m, split, stages, dtype):
    n, k = 2048 + 16, 1536  # N not a multiple of 64: a partial CTA
    q = _quantized(fmt_name, per_tensor, n, k, 100 * m + stages)
    packed = reference.pack_bytes(q["qweight"], q["scales"], tile_n, tile_k)
    x = torch.randn(m, k, device="cuda").to(dtype)
    b = torch.randn(n, device="cuda").to(dtype)
    out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
    assert cuda_w8.supports(x, packed, (n, k))
    cuda_w8.w8_decode(x, packed, (n, k), b, split, out, stages=stages)
    err = reference.rel_err(out, reference.ref_linear(x, fmt_name, q, b, weights_only=True))
    assert err < TOL[dtype], f"rel err {err:.2e}"


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("fmt_name,per_tensor,tile_n,tile_k", CASES[:3])
@pytest.mark.parametrize("m", [1, 8, 9])
@pytest.mark.parametrize("split,stages", [(2, 4), (3, 8), (9, 6), (16, 4)])
def test_cluster_split_k_matches_the_global_path(fmt_name, per_tensor, tile_n, tile_k, m, split, stages):
    """cluster=True: a row tile's split-K CTAs sum their partials in their thread-block cluster's
    shared memory (csrc/common.cuh cluster_sum), the row scale and bias in the owner's store. y
    against the reference and the global path's (which may differ in the last place: its atomics
    order the sums by timing), the same bits run after run and from a CUDA graph; uneven slices (3
    and 9 over 24 stages), a non-portable cluster of 16, and at M = 9 (two token columns, not built
    with the cluster store) the global path."""
    n, k = 2048 + 16, 1536
    q = _quantized(fmt_name, per_tensor, n, k, 7 * m + split)
    packed = reference.pack_bytes(q["qweight"], q["scales"], tile_n, tile_k)
    x = torch.randn(m, k, device="cuda").bfloat16()
    b = torch.randn(n, device="cuda").bfloat16()
    limit = 2 * torch.finfo(torch.bfloat16).eps

    def close(got, want) -> bool:  # the global path's atomics sum in timing order: last-place differences
        return bool((got.float() - want.float()).abs().max() <= limit * want.float().abs().max())

    # M <= 8: the cluster sums in rank order, the same bits run after run; M = 9 takes the global path
    again = torch.equal if m <= cuda_w8.CLUSTER_M_MAX else close
    y = cuda_w8.w8_decode(x, packed, (n, k), b, split, stages=stages, cluster=True)
    assert again(cuda_w8.w8_decode(x, packed, (n, k), b, split, stages=stages, cluster=True), y)
    assert close(y, cuda_w8.w8_decode(x, packed, (n, k), b, split, stages=stages))
    assert reference.rel_err(y, reference.ref_linear(x, fmt_name, q, b, weights_only=True)) < TOL[torch.bfloat16]
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        h = cuda_w8.w8_decode(x, packed, (n, k), b, split, stages=stages, cluster=True)
    g.replay()
    torch.cuda.synchronize()
    assert again(h, y)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("fmt_name,per_tensor,tile_n,tile_k", CASES)
@pytest.mark.parametrize("m", [1, 3, 8, 9, 16])
@pytest.mark.parametrize("warps,stages", [(8, 4), (16, 6), (0, 4)])
@pytest.mark.parametrize("k", [1536, 320])
def test_decode_by_rows_matches_the_reference(fmt_name, per_tensor, tile_n, tile_k, m, warps, stages, k):
    """VARIANT 4, the decode by rows: a CTA per 16 rows whose warps split K (24 stages over 8 warps,
    over 16 unevenly; K = 320: 5 stages, so most warps have none) and sum in shared memory in warp
    order: y matches the reference and is the same bits run after run and from a CUDA graph (no
    atomics), at one token column (M <= 8) and two. N = 2056: the last 16-row tile is half padding."""
    n = 2048 + 8
    q = _quantized(fmt_name, per_tensor, n, k, 11 * m + warps + k)
    _check_rows(fmt_name, q, reference.pack_bytes(q["qweight"], q["scales"], tile_n, tile_k), m, warps, stages,
                cuda_w8.ROWS)


def _check_rows(fmt_name, q, packed, m, warps, stages, variant):
    """A rows variant on [m, K] activations in both dtypes: y within the contract's tolerance into a
    NaN-poisoned output, the same bits run again and replayed from a CUDA graph (no atomics)."""
    n, k = q["qweight"].shape
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.randn(m, k, device="cuda").to(dtype)
        b = torch.randn(n, device="cuda").to(dtype)
        out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
        y = cuda_w8.w8_decode(x, packed, (n, k), b, warps, out, stages=stages, variant=variant)
        err = reference.rel_err(y, reference.ref_linear(x, fmt_name, q, b, weights_only=True))
        assert err < TOL[dtype], f"{dtype}: rel err {err:.2e}"
        assert torch.equal(cuda_w8.w8_decode(x, packed, (n, k), b, warps, stages=stages, variant=variant), y)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            h = cuda_w8.w8_decode(x, packed, (n, k), b, warps, stages=stages, variant=variant)
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(h, y)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("fmt_name,per_tensor,tile_n,tile_k", CASES)
@pytest.mark.parametrize("m", [1, 8, 9, 16])
@pytest.mark.parametrize("warps,stages", [(8, 2), (16, 3), (0, 2)])
@pytest.mark.parametrize("k", [1536, 384])
def test_decode_by_rows_on_wide_slots_matches_the_reference(fmt_name, per_tensor, tile_n, tile_k, m, warps, stages,
                                                             k):
    """VARIANT 6, the decode by rows on 128-k ring slots: 12 slots over 8 warps and unevenly over 16;
    K = 384: 3 slots, so most warps have none. y matches the reference, bit-identical on re-runs and
    from a CUDA graph, on every byte layout (the row-major one it was made for, the tiled ones).
    N = 2056: the last 16-row tile is half padding."""
    n = 2048 + 8
    q = _quantized(fmt_name, per_tensor, n, k, 13 * m + warps + k)
    _check_rows(fmt_name, q, reference.pack_bytes(q["qweight"], q["scales"], tile_n, tile_k), m, warps, stages,
                cuda_w8.ROWS_WIDE)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("fmt_name,k", [("fp8", 1600), ("w8a16", 1600)])
def test_wide_slots_fall_back_to_the_decode_by_rows(fmt_name, k):
    """Where the 128-k slots cannot run (K % 128 = 64), VARIANT 6 runs VARIANT 4 at the same ring
    bytes: the same bits as asking for it."""
    n, m = 1024, 3
    q = _quantized(fmt_name, False, n, k, k)
    packed = reference.pack_bytes(q["qweight"], q["scales"], 16, None if fmt_name == "fp8" else 64)
    x = torch.randn(m, k, device="cuda").bfloat16()
    y = cuda_w8.w8_decode(x, packed, (n, k), None, 16, stages=3, variant=cuda_w8.ROWS_WIDE)
    assert torch.equal(y, cuda_w8.w8_decode(x, packed, (n, k), None, 16, stages=6, variant=cuda_w8.ROWS))
    assert reference.rel_err(y, reference.ref_linear(x, fmt_name, q, None, weights_only=True)) < TOL[torch.bfloat16]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("m", [1, 9])
@pytest.mark.parametrize("variant,warps,stages",
                         [(cuda_w8.ROWS, 8, 4), (cuda_w8.ROWS_WIDE, 16, 2), (cuda_w8.SPLIT, 3, 4)])
def test_w8a8_rowmajor_decodes_with_16bit_activations(m, variant, warps, stages):
    """i8_rowmajor (w8a8's layout, 8-row tiles read as 16): the kernel gives the weights-only math
    (x kept 16-bit, more accurate than the W8A8 contract), also through dispatch's CUDA config, the
    same bits."""
    from turbopack.inference.kernels.config import KernelConfig, KernelName
    from turbopack.inference.kernels.dispatch import FAMILIES
    from turbopack.layouts.base import LayoutName

    n, k = 2048 + 16, 1536
    q = _quantized("w8a8", False, n, k, 17 * m + variant)
    packed = reference.pack_bytes(q["qweight"], q["scales"], 8, None)
    if variant != cuda_w8.SPLIT:
        _check_rows("w8a8", q, packed, m, warps, stages, variant)
    x = torch.randn(m, k, device="cuda").bfloat16()
    assert cuda_w8.supports(x, packed, (n, k))
    y = cuda_w8.w8_decode(x, packed, (n, k), None, warps, stages=stages, variant=variant)
    assert reference.rel_err(y, reference.ref_linear(x, "w8a8", q, None, weights_only=True)) < TOL[torch.bfloat16]
    cfg = KernelConfig(KernelName.CUDA, split_k=warps, ring_stages=stages, variant=variant or None)
    got = FAMILIES.get(LayoutName.I8_ROWMAJOR).run(x, packed, (n, k), None, cfg, None, None)
    assert torch.equal(got, y) if variant != cuda_w8.SPLIT else reference.rel_err(got, y) < 1e-3


def _every_code(fmt_name: str, n: int, k: int) -> torch.Tensor:
    """[n, k] codes holding every finite byte value of the format (e4m3: no NaN 0x7F/0xFF)."""
    vals = torch.arange(256, dtype=torch.int32)
    if fmt_name == "fp8":
        vals = vals[(vals & 0x7F) != 0x7F]
    codes = vals[torch.arange(n * k) % vals.numel()].to(torch.uint8).view(n, k)
    return codes.view(torch.int8 if fmt_name == "w8a16" else torch.float8_e4m3fn)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("fmt_name,tile_k", [("w8a16", 64), ("fp8", None), ("fp8", 64)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_code_converts_exactly(fmt_name, tile_k, dtype):
    n, k = 256, 256
    codes = _every_code(fmt_name, n, k).cuda()
    packed = reference.pack_bytes(codes, torch.ones(n, device="cuda"), 16, tile_k)
    want = codes.float().to(dtype)  # every code is exact in bf16 and fp16 (8 significant bits at most)
    for k0 in range(0, k, 16):  # 16 one-hot tokens at a time: y[t, n] = q[n, k0 + t]
        x = torch.zeros(16, k, device="cuda", dtype=dtype)
        x[torch.arange(16), k0 + torch.arange(16)] = 1
        y = cuda_w8.w8_decode(x, packed, (n, k), None, 1, stages=4)
        assert torch.equal(y, want[:, k0:k0 + 16].T), f"codes k={k0}..{k0 + 15}"


@pytest.mark.parametrize("tile_n,tile_k", [(64, 64), (16, 64), (16, None), (8, None)])
def test_kernel_addressing_reads_every_code_of_the_layout(tile_n, tile_k):
    """The kernel's byte address of (n, k), from cuda_w8.strides, finds code (n, k) in the packed
    tensor (CPU: the same formula w8.cu evaluates; i8_rowmajor's 8-row tiles read as 16)."""
    n, k = 80, 192
    codes = (torch.arange(n * k) * 7 % 251).to(torch.uint8).view(n, k)
    packed = reference.pack_bytes(codes.view(torch.int8), torch.ones(n), tile_n, tile_k)["qweight"]
    tn, s_tile, s_row, s_stage = cuda_w8.strides(packed)
    nn, kk = torch.meshgrid(torch.arange(n), torch.arange(k), indexing="ij")
    addr = (nn // tn) * s_tile + (nn % tn) * s_row + (kk // 64) * s_stage + kk % 64
    assert torch.equal(packed.view(torch.uint8).flatten()[addr], codes)


def test_w8a8_weights_only_reference_keeps_x_16bit():
    """ref_linear's weights-only w8a8 (the CUDA decode's contract on i8_rowmajor) is w8a16's math on
    the same codes and scales; the W8A8 contract rounds x to int8 per token, so it differs."""
    torch.manual_seed(3)
    x = torch.randn(3, 256).bfloat16()
    q = get_format("w8a8").quantize(torch.randn(64, 256) * 0.02)
    got = reference.ref_linear(x, "w8a8", q, weights_only=True)
    assert torch.equal(got, reference.ref_linear(x, "w8a16", q))
    assert not torch.equal(got, reference.ref_linear(x, "w8a8", q))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("fmt_name,per_tensor,tile_n,tile_k", CASES)
@pytest.mark.parametrize("m,warps,variant,stages", [(1, 8, cuda_w8.ROWS, 4), (5, 16, cuda_w8.ROWS_WIDE, 2),
                                                    (9, 8, cuda_w8.ROWS_WIDE, 3), (16, 16, cuda_w8.ROWS, 6)])
@pytest.mark.parametrize("act", ["silu", "gelu_pytorch_tanh"])
def test_decode_by_rows_glu_is_linear_then_act_mul(fmt_name, per_tensor, tile_n, tile_k, m, warps, variant, stages,
                                                    act):
    """The rows variants' GLU (rows_store.cuh glu_store: half the warps on gate's rows, half on up's, each
    half's sum scaled by its row's scale, act(gate) * up in the store) on a fused [gate; up] of 2 x
    1056 rows (up starts inside a 64-row tile): within fp32 summation order of the same kernel's
    gate|up then glue.act_mul, both dtypes, bit-identical re-runs and graph replays; dispatch.glu
    runs it from a rows config; a bias, the split-K variant or N % 32 != 0 are refused (-1)."""
    from turbopack.formats import get_format
    from turbopack.inference.config import Activation
    from turbopack.inference.kernels import dispatch
    from turbopack.inference.kernels.config import KernelConfig, KernelName
    from turbopack.inference.kernels.glue import act_mul
    from turbopack.layouts import get_layout

    activation, n, k = Activation(act), 2 * 1056, 1536
    q = _quantized(fmt_name, per_tensor, n, k, 17 * m + warps)
    packed = reference.pack_bytes(q["qweight"], q["scales"], tile_n, tile_k)
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.randn(m, k, device="cuda").to(dtype)
        run = functools.partial(cuda_w8.w8_decode, x, packed, (n, k), None, warps, stages=stages, variant=variant)
        h = run(glu=activation)
        assert h.shape == (m, n // 2) and h.dtype == dtype
        assert reference.rel_err(h, act_mul(run(), activation).float()) < 2e-3, dtype
        assert torch.equal(run(glu=activation), h)
        out = torch.empty_like(h)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            cuda_w8.w8_decode(x, packed, (n, k), None, warps, out, stages=stages, variant=variant, glu=activation)
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, h)
    if tile_k is not None:  # a tiled layout dispatch knows by name
        fmt = get_format(fmt_name, **({"per_tensor": True} if per_tensor else {}))
        name = {"w8a16": f"i8_t{tile_n}x64", "fp8": "fp8_t16x64_upcast"}[fmt_name]
        cfg = KernelConfig(KernelName.CUDA, split_k=warps, ring_stages=stages, variant=variant)
        got = dispatch.glu(x, fmt, get_layout(name), packed, (n, k), activation, config=cfg)
        assert got is not None and torch.equal(got, h)
    b = torch.randn(n, device="cuda").to(x.dtype)
    for bad in (dict(bias=b), dict(variant=cuda_w8.SPLIT), dict(shape=(n - 16, k))):
        args = dict(bias=None, variant=variant, shape=(n, k)) | bad
        with pytest.raises(RuntimeError, match="code -1"):
            cuda_w8.w8_decode(x, packed, args["shape"], args["bias"], warps, stages=stages, variant=args["variant"],
                              glu=activation)
