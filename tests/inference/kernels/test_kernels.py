"""The Triton linear kernels against the layouts' CPU emulator (turbopack.layouts.emulate).

Without CUDA (CI) the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, set before
triton is imported) on small, awkward shapes: N=17 (padding inside a tile), N=192, K=576 (not a
multiple of 128), M in 1, 3, 33 and 129 (the prefill default: tensor cores, BM = 128), split-K on
and off. With CUDA the same cases run compiled, and
the ``gpu`` tests add real layer shapes against a float64 reference on the GPU.
Tolerance: relative Frobenius error < 1e-2 (outputs are 16-bit; two roundings of the same sum
differ by ~4e-3); w8a8's integer path must match the emulator to output rounding.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")

from turbopack.errors import ShapeError  # noqa: E402
from turbopack.formats import get_format  # noqa: E402
from turbopack.inference.kernels import dispatch, epilogue, reference, w8a8  # noqa: E402
from turbopack.inference.kernels import table as kernel_table  # noqa: E402
from turbopack.inference.kernels.config import KernelConfig, KernelName  # noqa: E402
from turbopack.layouts import emulate_linear, get_layout  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
if DEV == "cpu" and not epilogue.interpreting():
    pytest.skip("TRITON_INTERPRET=1 was not in effect when the kernels were imported", allow_module_level=True)

TOL = 1e-2
GEMV = KernelConfig(KernelName.GEMV, block_n=32, block_k=128, split_k=3)
TC = KernelConfig(KernelName.TC, block_n=64, block_m=16, block_k=128, split_k=2)


def _case(fmt_name, layout_name, n, k, seed, bias=True, act=torch.bfloat16, **params):
    gen = torch.Generator().manual_seed(seed)
    fmt = get_format(fmt_name, **params)
    q = fmt.quantize(torch.randn(n, k, generator=gen))
    layout = get_layout(layout_name)
    packed = layout.pack(fmt, q, (n, k))
    b = torch.randn(n, generator=gen).to(act) if bias else None
    return fmt, layout, q, packed, b, gen


def _run(fmt, layout, packed, shape, b, x, cfg):
    dev_packed = {key: t.to(DEV) for key, t in packed.items()}
    y = dispatch.linear(x.to(DEV), fmt, layout, dev_packed, shape, b.to(DEV) if b is not None else None, config=cfg)
    return y.cpu()


def _check(fmt, layout, packed, shape, b, x, cfg, tol=TOL):
    y = _run(fmt, layout, packed, shape, b, x, cfg)
    want = emulate_linear(x, fmt, layout, packed, shape, bias=b)
    assert y.dtype == x.dtype and y.shape == want.shape
    err = reference.rel_err(y, want)
    assert err < tol, f"rel err {err:.2e}"


W4_CASES = [  # (layout, N, K, M, group, sym, scale dtype, act dtype, config)
    ("w4_t64x64", 192, 576, 1, 64, True, "bfloat16", torch.bfloat16, GEMV),
    ("w4_t64x64", 192, 576, 1, 32, False, "bfloat16", torch.bfloat16, replace(GEMV, round_weights=False, split_k=1)),
    ("w4_t16x64", 17, 640, 1, 128, False, "float16", torch.float16, GEMV),
    ("w4_t64x64", 192, 640, 1, 128, False, "bfloat16", torch.bfloat16, replace(GEMV, round_weights=False)),
    ("w4_t64x64", 192, 576, 3, 64, False, "bfloat16", torch.bfloat16, TC),
    ("w4_t16x64", 17, 576, 33, 32, True, "bfloat16", torch.float16, replace(TC, block_m=32, split_k=1)),
    ("w4_t64x64", 17, 640, 33, 128, False, "float16", torch.bfloat16, TC),
    ("w4_t64x64", 192, 640, 3, 128, True, "bfloat16", torch.bfloat16, replace(TC, planes=True)),
    ("w4_t16x64", 17, 576, 129, 64, False, "bfloat16", torch.bfloat16, None),   # the large-M default
    ("w4_t64x64", 80, 640, 129, 128, False, "float16", torch.float16, None),
]


@pytest.mark.parametrize("layout_name,n,k,m,group,sym,sdt,act,cfg", W4_CASES)
def test_w4a16(layout_name, n, k, m, group, sym, sdt, act, cfg):
    fmt, layout, _, packed, b, gen = _case("w4a16", layout_name, n, k, m * 7 + n, act=act,
                                           group_size=group, sym=sym, scale_dtype=sdt)
    _check(fmt, layout, packed, (n, k), b, torch.randn(m, k, generator=gen).to(act), cfg)


def test_large_m_default_is_the_tensor_core_kernel():
    """Prefill reads the packed layout on tensor cores; there is no dequantize-then-cuBLAS path."""
    from turbopack.inference.kernels import weight_only

    for m in (65, 129, 1024, 2048, 8192):
        assert weight_only.default_config(m, 28672, 4096, 128) == KernelConfig(
            KernelName.TC, block_n=128, block_m=128, block_k=64, num_warps=8, num_stages=3, split_k=1)
    assert not hasattr(weight_only, "dequant_kernel")


@pytest.mark.parametrize("layout_name", ["w4_t16x64", "w4_t64x64"])
@pytest.mark.parametrize("sym,sdt,group", [(False, "bfloat16", 32), (False, "float16", 128), (True, "float16", 64)])
@pytest.mark.parametrize("kernel", ["tc", "gemv"])
def test_w4_kernel_decodes_bit_identically_to_the_format(layout_name, sym, sdt, group, kernel):
    """One-hot activations read the kernel's weights out exactly (y[m, n] = w[n, k_m]): they equal
    the format's (q - z) * s rounded to fp16, bit for bit, for both scale dtypes and every zero
    point. (fp16 activations: the CPU interpreter's fp32 -> bf16 cast truncates instead of
    rounding to nearest even, so bf16 outputs cannot be compared bit for bit there.)"""
    n, k = 24, 256
    fmt = get_format("w4a16", group_size=group, sym=sym, scale_dtype=sdt)
    gen = torch.Generator().manual_seed(group + n)
    codes = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
    expo = torch.randint(-12, 9, (n, k // group), generator=gen).float()
    scales = (torch.rand(n, k // group, generator=gen) + 1) * torch.exp2(expo)   # all significand bits used
    q = {"qweight": codes[:, 0::2] | (codes[:, 1::2] << 4), "scales": scales.to(getattr(torch, sdt))}
    if not sym:
        q["zeros"] = torch.randint(0, 16, (n, k // group), generator=gen, dtype=torch.uint8)
    layout = get_layout(layout_name)
    packed = layout.pack(fmt, q, (n, k))
    want = fmt.dequantize(q).to(torch.float16)
    eye = torch.eye(k, dtype=torch.float16)
    if kernel == "tc":
        cols = list(range(k))
        y = _run(fmt, layout, packed, (n, k), None, eye, replace(TC, block_m=64, split_k=1)).T
    else:  # M = 1: one column at a time; every element position e of a word, and group edges
        cols = list(range(9)) + [group - 1, group, k - 1]
        one = replace(GEMV, round_weights=False, split_k=1)
        y = torch.stack([_run(fmt, layout, packed, (n, k), None, eye[c : c + 1], one)[0] for c in cols], 1)
    assert torch.equal(y, want[:, cols]), f"{int((y != want[:, cols]).sum())} weights differ"


@pytest.mark.parametrize("fmt_name,layout_name,n,k,m,cfg,params", [
    ("w8a16", "i8_t64x64", 192, 576, 1, GEMV, {}),
    ("w8a16", "i8_t16x64", 17, 576, 33, TC, {}),
    ("fp8", "fp8_t16x64_upcast", 192, 576, 1, GEMV, {"per_tensor": True}),
    ("fp8", "fp8_t16x64_upcast", 17, 576, 3, TC, {}),
    ("w8a16", "i8_t64x64", 192, 576, 3, replace(TC, planes=True), {}),
    ("w8a16", "i8_t16x64", 17, 576, 129, None, {}),                       # the large-M default
    ("fp8", "fp8_t16x64_upcast", 17, 576, 129, None, {"per_tensor": True}),
])
def test_8bit_weight_only(fmt_name, layout_name, n, k, m, cfg, params):
    if cfg is None:
        assert (
            dispatch.resolve_config(layout_name, get_format(fmt_name, **params), n, k, m, torch.device("cpu")).kernel
            is KernelName.TC
        )
    fmt, layout, _, packed, b, gen = _case(fmt_name, layout_name, n, k, m + n, **params)
    _check(fmt, layout, packed, (n, k), b, torch.randn(m, k, generator=gen).bfloat16(), cfg)


@pytest.mark.parametrize("n,k,m,cfg", [
    (192, 576, 1, KernelConfig(KernelName.TRITON, block_m=16, block_n=64, block_k=128, split_k=2)),
    (17, 576, 3, KernelConfig(KernelName.TRITON, block_m=16, block_n=32, block_k=64, split_k=1)),
    (192, 576, 33, KernelConfig(KernelName.TRITON, block_m=32, block_n=64, block_k=256, split_k=3)),
])
def test_w8a8(n, k, m, cfg):
    fmt, layout, _, packed, b, gen = _case("w8a8", "i8_rowmajor", n, k, m + n)
    _check(fmt, layout, packed, (n, k), b, torch.randn(m, k, generator=gen).bfloat16(), cfg, tol=5e-3)


@pytest.mark.parametrize("n,k,m,per_tensor", [(192, 576, 1, False), (17, 576, 33, True)])
def test_fp8_rowmajor(n, k, m, per_tensor):
    fmt, layout, _, packed, b, gen = _case("fp8", "fp8_rowmajor", n, k, m + n, per_tensor=per_tensor)
    _check(fmt, layout, packed, (n, k), b, torch.randn(m, k, generator=gen).bfloat16(), None)


@pytest.mark.parametrize("fp8", [False, True])
def test_activation_quantizer_matches_the_format(fp8):
    """Codes and scales bit for bit equal to the format's per-token quantizer, zero padding."""
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(5, 200, generator=gen) * torch.tensor([1.0, 1e-3, 50.0, 0.0, 3.0])[:, None]).bfloat16()
    q, s = w8a8.quantize_rows(x.to(DEV), 208, fp8=fp8)
    ref_q, ref_s = (reference.quantize_rows_fp8 if fp8 else reference.quantize_rows_int8)(x)
    assert torch.equal(s.cpu()[:, 0], ref_s)
    assert torch.equal(q.cpu()[:, :200].view(torch.uint8), ref_q.view(torch.uint8))
    assert not q.cpu()[:, 200:].view(torch.uint8).any()


def test_int8_activation_quantizer_matches_the_format_at_rounding_ties():
    """Enough bf16 rows that x * (127/amax) and x / (amax/127) round apart somewhere: the kernel
    must take the reciprocal (vLLM's convention) exactly as the format does."""
    gen = torch.Generator().manual_seed(11)
    x = (torch.randn(96, 256, generator=gen) * 4).bfloat16()
    q, s = w8a8.quantize_rows(x.to(DEV), 256, fp8=False)
    ref_q, ref_s = reference.quantize_rows_int8(x)
    by_div = torch.clamp(torch.round(x.float() / ref_s[:, None]), -127, 127).to(torch.int8)
    assert not torch.equal(ref_q, by_div)
    assert torch.equal(s.cpu()[:, 0], ref_s) and torch.equal(q.cpu(), ref_q)


def test_split_k_leaves_workspace_zeroed_and_writes_every_output():
    fmt, layout, _, packed, b, gen = _case("w8a16", "i8_t64x64", 192, 576, 9)
    x = torch.randn(3, 576, generator=gen).bfloat16().to(DEV)
    from turbopack.inference.kernels import weight_only

    out = torch.full((3, 192), float("nan"), dtype=torch.bfloat16, device=DEV)
    p = {key: t.to(DEV) for key, t in packed.items()}
    weight_only.launch(x, weight_only.I8, p, (192, 576), None, replace(TC, split_k=4), out=out)
    assert bool(torch.isfinite(out).all())
    assert reference.rel_err(out.cpu(), emulate_linear(x.cpu(), fmt, layout, packed, (192, 576))) < TOL
    for buf in epilogue._WS.values():
        assert not buf.any(), "split-K must leave its workspace and counters at zero"


NVFP4_CASES = [  # (N, K, M, act dtype, config): N=17 pads a tile, K=80/208 pad the last 64-wide tile
    (17, 80, 1, torch.bfloat16, GEMV),
    (48, 208, 1, torch.float16, replace(GEMV, split_k=1)),
    (17, 208, 3, torch.bfloat16, TC),
    (48, 80, 33, torch.float16, replace(TC, block_m=32, split_k=1)),
    (17, 208, 129, torch.bfloat16, None),   # the large-M default
]


@pytest.mark.parametrize("n,k,m,act,cfg", NVFP4_CASES)
def test_nvfp4(n, k, m, act, cfg):
    """The NVFP4 weight-only kernel against the emulator (and so the float64 contract)."""
    fmt, layout, q, packed, b, gen = _case("nvfp4", "nvfp4_t16x64", n, k, m + n, act=act)
    x = torch.randn(m, k, generator=gen).to(act)
    _check(fmt, layout, packed, (n, k), b, x, cfg)
    err = reference.rel_err(_run(fmt, layout, packed, (n, k), b, x, cfg), reference.ref_linear(x, "nvfp4", q, b))
    assert err < TOL, f"vs the float64 contract: rel err {err:.2e}"


@pytest.mark.parametrize("kernel", [GEMV, TC])
def test_nvfp4_kernel_decodes_the_exact_products(kernel):
    """Identity activations in fp16 read the kernel's weights out: with global scale 1 and
    scales / codes over their whole range (every code, every e4m3 byte from subnormal to 448)
    each is e2m1 * e4m3 exactly (the 16-bit output holds it exactly: <= 6 significant bits)."""
    n, k = 32, 128
    gen = torch.Generator().manual_seed(9)
    fmt = get_format("nvfp4")
    q = {"qweight": torch.randint(0, 256, (n, k // 2), generator=gen, dtype=torch.uint8),
         "scales": torch.randint(0, 0x7F, (n, k // 16), generator=gen, dtype=torch.uint8).view(torch.float8_e4m3fn),
         "global_scale": torch.ones(1)}
    layout = get_layout("nvfp4_t16x64")
    packed = layout.pack(fmt, q, (n, k))
    eye = torch.eye(k, dtype=torch.float16)
    y = torch.cat([_run(fmt, layout, packed, (n, k), None, eye[i:i + 16], kernel) for i in range(0, k, 16)])
    assert torch.equal(y.float(), fmt.dequantize(q).T)


@pytest.mark.parametrize("fmt_name,layout_name,params", [
    ("nvfp4", "nvfp4_t16x64", {}),
    ("w4a16", "w4_t64x64", {"group_size": 32, "sym": False}),
    ("w4a16", "w4_t16x64", {"group_size": 128, "sym": True, "scale_dtype": "float16"}),
    ("w8a16", "i8_t16x64", {}),
    ("w8a8", "i8_rowmajor", {}),
    ("fp8", "fp8_rowmajor", {"per_tensor": True}),
    ("fp8", "fp8_t16x64_upcast", {}),
])
def test_torch_packer_matches_layouts(fmt_name, layout_name, params):
    """The benchmark's GPU-side packer writes the same bytes as turbopack.layouts."""
    fmt, layout, q, packed, _, _ = _case(fmt_name, layout_name, 77, 384, 5, **params)
    mine = reference.pack(q, layout)
    assert mine.keys() == packed.keys()
    for key in packed:
        assert mine[key].dtype == packed[key].dtype and mine[key].shape == packed[key].shape, key
        assert torch.equal(mine[key].view(torch.uint8), packed[key].view(torch.uint8)), key


@pytest.mark.parametrize("cap,arch", [((10, 0), "sm100"), ((10, 3), "sm100"), ((12, 0), "sm120"),
                                      ((12, 1), "sm120"), ((8, 7), "sm86"), ((11, 0), "sm110")])
def test_untuned_arch_falls_back_to_the_family_default(monkeypatch, cap, arch):
    """A device maps to the registered arch that runs its code; an arch without a tuned table
    gets the family's own default, never another arch's entries (sm90's are for w4_t64x64 and
    a 228 KB part)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)
    assert dispatch.device_arch(torch.device("cuda")) == arch
    monkeypatch.setattr(dispatch, "device_arch", lambda device: arch)
    fmt = get_format("w4a16")
    for m in (1, 16, 300):
        for layout in ("w4_t16x64", "w4_t64x64"):
            assert kernel_table.lookup(arch, layout, 4096, 4096, m) is None
            got = dispatch.resolve_config(layout, fmt, 4096, 4096, m, torch.device("cpu"))
            assert got == dispatch.FAMILIES.get(layout).default(m, 4096, 4096, fmt)
            assert got.kernel != KernelName.CUDA


def test_bench_runs_nvfp4_beside_w4a16():
    """benchmarks/bench_linear.py's setups: NVFP4 has its layout, Triton configs to sweep and, for
    decode (M <= 16), the CUDA kernel's (cuda_fp4)."""
    from turbopack.inference.kernels import bench, tune

    assert bench.SETUPS["nvfp4"][0] == "nvfp4_t16x64"
    for m in (1, 16, 256):
        cands = tune.candidates("nvfp4", 4096, 4096, m, 132)
        assert cands and all(c.kernel in (KernelName.GEMV, KernelName.TC, KernelName.CUDA) for c in cands)
        assert any(c.kernel in (KernelName.GEMV, KernelName.TC) for c in cands)


def test_bad_input_is_one_line_error():
    fmt, layout, _, packed, _, _ = _case("w8a16", "i8_t64x64", 64, 128, 1)
    p = {key: t.to(DEV) for key, t in packed.items()}
    with pytest.raises(ShapeError, match="expected bfloat16/float16"):
        dispatch.linear(torch.randn(2, 64, device=DEV).bfloat16(), fmt, layout, p, (64, 128))
    with pytest.raises(ShapeError, match="packed qweight"):
        dispatch.linear(
            torch.randn(2, 128, device=DEV).bfloat16(), fmt, layout, {**p, "qweight": p["qweight"][:, :1]}, (64, 128)
        )


# -- real shapes on the GPU --------------------------------------------------------------------------

GPU_SHAPES = [(6144, 4096), (4096, 14336)]


@pytest.mark.gpu
@pytest.mark.skipif(DEV != "cuda", reason="needs CUDA")
@pytest.mark.parametrize("fmt_name,layout_name", [("w4a16", "w4_t64x64"), ("w8a16", "i8_t64x64"),
                                                  ("w8a8", "i8_rowmajor"), ("fp8", "fp8_rowmajor"),
                                                  ("fp8", "fp8_t16x64_upcast"), ("nvfp4", "nvfp4_t16x64")])
@pytest.mark.parametrize("m", [1, 16, 256])
def test_gpu_real_shapes(fmt_name, layout_name, m):
    for n, k in GPU_SHAPES:
        fmt = get_format(fmt_name)
        w = torch.randn(n, k, device="cuda")
        q = fmt.quantize(w)
        layout = get_layout(layout_name)
        packed = reference.pack(q, layout)
        x = torch.randn(m, k, device="cuda").bfloat16()
        b = torch.randn(n, device="cuda").bfloat16()
        y = dispatch.linear(x, fmt, layout, packed, (n, k), b)
        # the tuned table may run fp8_rowmajor's decode (M <= 16) on the weight-only CUDA kernel:
        # 16-bit activations times the e4m3 weights, the more exact of the two contracts
        cfg = dispatch.resolve_config(layout_name, fmt, n, k, m, x.device)
        ref = reference.ref_linear(x, fmt_name, q, b, weights_only=layout.weights_only or cfg.kernel is KernelName.CUDA)
        assert reference.rel_err(y, ref) < TOL
