"""The CUDA C++ kernels (csrc/w4.cu; w8.cu in test_cuda_w8.py) compile with this machine's nvcc for
sm_80, sm_90a and, where this nvcc knows them (CUDA 12.8+), the Blackwell targets sm_100a and sm_120a
(CI has no GPU, so that is a compile check: on Blackwell the kernels are compiled, never run), and on
a GPU they match the reference of the layout's contract on fresh random inputs: the decode kernel
within 1e-2 relative (its weights are exact fp32 (q - z)*s where the contract rounds them to 16 bits,
~1e-3, plus the 16-bit rounding of y: measured 1.6e-3 in bf16 on the H200), the dequantizer bit
for bit."""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

import pytest
import torch

from turbopack.errors import TurbopackError
from turbopack.inference.kernels import (
    cuda_build,
    cuda_fp4,
    cuda_i8ws,
    cuda_moe,
    cuda_w4,
    cuda_w4mm,
    cuda_w4wg,
    cuda_w4ws,
    cuda_w8,
)

NVCC = cuda_w4.nvcc()
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def nvcc_targets() -> set[str]:
    """The compute_XX targets this nvcc lists (empty without nvcc)."""
    if NVCC is None:
        return set()
    res = subprocess.run([NVCC, "--list-gpu-arch"], capture_output=True, text=True)
    return set(res.stdout.split()) if res.returncode == 0 else set()


CAPS = [(8, 0), (9, 0), (10, 0), (12, 0)]


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
@pytest.mark.parametrize("src", [cuda_w4.SRC, cuda_w4mm.SRC, cuda_w4wg.SRC, cuda_w4ws.SRC, cuda_i8ws.SRC,
                                 cuda_w8.SRC, cuda_fp4.SRC], ids=lambda p: p.name)
def test_kernels_compile_without_spills(src, tmp_path, tuned_build):
    """Every target of CAPS this nvcc knows (sm_80 and sm_90a always). sm_80 and sm_90a (the
    session's tuned_build) go through ptxas at full optimization and must not spill; the Blackwell
    targets, which no machine here runs, in one nvcc call whose --threads compiles them side by
    side, through ptxas at -O0: every instruction and inline PTX statement is still checked for
    them (what would fail a Blackwell user's first build), at a quarter of ptxas's time (w4_mma.cu:
    24 s a target where 86 s; ptxas is ~75% of these builds, and CI has two cores)."""
    caps, tuned = [cap for cap in CAPS if f"compute_{cap[0]}{cap[1]}" in nvcc_targets()], tuned_build.targets
    assert set(tuned) <= set(caps), "nvcc cannot target sm_80 and sm_90a"
    res, _ = tuned_build(src)
    assert res.returncode == 0, res.stderr[-2000:]
    for cap in tuned:  # ptxas reports every target's kernels
        assert f"sm_{cap[0]}{cap[1]}" in res.stderr, cap
    # a register array indexed at run time would land in local memory
    spills = [ln for ln in res.stderr.splitlines() if "spill" in ln and not ln.strip().startswith("0 bytes stack")]
    assert spills == [], spills[:3]
    blackwell = [c for c in caps if c not in tuned]
    if blackwell:
        cmd = [NVCC, "-c", "-O3", "-std=c++17", "--threads", "0", "-Xptxas", "-v,-O0",
               *[cuda_w4.gencode(cap) for cap in blackwell], str(src), "-o", str(tmp_path / "k.o")]
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]
        assert (tmp_path / "k.o").stat().st_size > 0
        for cap in blackwell:
            assert f"sm_{cap[0]}{cap[1]}" in res.stderr, cap


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
@pytest.mark.parametrize("src", [cuda_w4ws.SRC, cuda_i8ws.SRC], ids=lambda p: p.name)
def test_warp_specialized_kernels_stay_small(src, tuned_build):
    """Run 32: each_out's store unrolled over 128 accumulators (~6 K SASS instructions that run once a
    tile, so every one is fetched from L2) took 35-55% of these kernels' time. With store_rows and
    store_partials every sm_90a kernel is under 4 K instructions; a store unrolled per accumulator
    again puts one over 6 K (21 K before)."""
    import triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        pytest.skip("no cuobjdump in the triton wheel")
    res, keep = tuned_build(src)
    assert res.returncode == 0, res.stderr[-2000:]
    sass = subprocess.run([str(cuobjdump), "-sass", str(keep / f"{src.stem}.compute_90a.cubin")],
                          capture_output=True, text=True, check=True).stdout
    sizes = {f.split("\n")[0]: len(re.findall(r"/\*[0-9a-f]{4,}\*/\s+[^;]*;", f))
             for f in re.split(r"\n\s*Function : ", sass)[1:]}
    assert len(sizes) >= 6 and max(sizes.values()) < 6000, sorted(sizes.values())[-3:]


def test_build_key_follows_each_sources_includes(tmp_path, monkeypatch):
    # an edit to a header must rebuild every library that includes it, directly or through another
    # header, and leave the others' cached libraries valid
    import shutil

    csrc = tmp_path / "csrc"
    shutil.copytree(cuda_build.CSRC, csrc)
    monkeypatch.setattr(cuda_build, "CSRC", csrc)
    sources = sorted(csrc.glob("*.cu"))
    included = {h for src in sources for h in cuda_build.headers(src)}
    assert included == {p.name for p in csrc.glob("*.cuh")}  # no header outside every key
    assert {"w4_v67.cuh", "w4_stage.cuh", "common.cuh"} <= set(cuda_build.headers(csrc / "w4.cu"))
    before = {src.name: cuda_build.lib_path(src, (9, 0), "nvcc") for src in sources}
    with open(csrc / "w4_stage.cuh", "a") as f:  # w4.cu, moe_w4.cu and, through them, their headers
        f.write("// edited\n")
    changed = {src.name for src in sources if cuda_build.lib_path(src, (9, 0), "nvcc") != before[src.name]}
    assert changed == {src.name for src in sources if "w4_stage.cuh" in cuda_build.headers(src)}
    assert "w4.cu" in changed and "w4_mma.cu" not in changed
    (csrc / "w4_mma.cuh").write_text('#include "missing.cuh"\n')
    with pytest.raises(TurbopackError, match="missing.cuh"):
        cuda_build.lib_path(csrc / "w4_mma.cu", (9, 0), "nvcc")


@pytest.mark.parametrize("mod", [cuda_w4, cuda_w4mm, cuda_w4wg, cuda_w4ws, cuda_i8ws, cuda_w8, cuda_fp4, cuda_moe],
                         ids=lambda m: m.SRC.name)
def test_ctypes_signatures_match_the_c_declarations(mod):
    """Each library's ctypes argtypes are its extern "C" function's parameters, one for one: a
    pointer (``T*``) for a pointer type, a C int for ``int`` (and so on). ctypes casts whatever it is given, so
    a parameter added on one side only (a new switch, say) would shift every later argument on the
    GPU and nothing on the CPU would notice."""
    import ctypes
    import re

    text = mod.SRC.read_text()
    ints = {"int": ctypes.c_int, "long long": ctypes.c_longlong, "float": ctypes.c_float}
    for name, argtypes in mod._SIGNATURES.items():
        decl = re.search(r'extern "C" int ' + name + r"\(([^)]*)\)", text)
        assert decl, f"{name} not declared in {mod.SRC.name}"
        params = [" ".join(p.split()) for p in decl.group(1).split(",")]
        assert len(params) == len(argtypes), (name, len(params), len(argtypes))
        for param, ct in zip(params, argtypes, strict=True):
            pointer = "*" in param
            assert pointer == (ct is ctypes.c_void_p or issubclass(ct, ctypes.Array)), (name, param, ct)
            assert pointer or ints[param.rsplit(" ", 1)[0]] is ct, (name, param, ct)


def test_gencode_targets_arch_specific_where_registered():
    assert cuda_w4.gencode((9, 0)) == "-gencode=arch=compute_90a,code=sm_90a"
    assert cuda_w4.gencode((10, 0)) == "-gencode=arch=compute_100a,code=sm_100a"
    assert cuda_w4.gencode((12, 0)) == "-gencode=arch=compute_120a,code=sm_120a"
    assert cuda_w4.gencode((8, 6)) == "-gencode=arch=compute_86,code=sm_86"
    # a part without its own entry gets code for exactly itself, not its arch's "a" target
    # (an sm_100a cubin does not load on a B300, compute capability 10.3)
    assert cuda_w4.gencode((10, 3)) == "-gencode=arch=compute_103,code=sm_103"


def _weight(n, k, group, sym, dtype, seed):
    from turbopack.formats import get_format
    from turbopack.inference.kernels import reference

    torch.manual_seed(seed)
    fmt = get_format("w4a16", group_size=group, sym=sym, scale_dtype=str(dtype).removeprefix("torch."))
    q = fmt.quantize(torch.randn(n, k, device="cuda"))
    return fmt, q, reference


#: (group, sym, split, stages, variant): v5 (0), v6 (1) and v7 (2) over both groups, sym/asym, every ring
#: depth each is built for, split 1, auto (0), uneven (3: the last CTA shorter; 7: a CTA with no
#: stage at K=2048) and one stage per CTA (16); v8 (3), whose split is CTAs per SM: 0 (all that fit:
#: at N=4112, K=2048, 65 tiles x 16 stages = 1040 items; M = 1: stripes of 1-2 items, up to 16 arrivals per tile),
#: 1 (132 stripes of 7-8 items on the H200, a tile over 2-3) and 2 (264 of 3-4, a tile over 4-5)
DECODE_CASES = [(128, False, 1, 4, 0), (128, True, 4, 6, 0), (64, False, 7, 6, 0), (64, True, 0, 4, 0),
                (128, False, 0, 6, 0), (128, False, 1, 8, 1), (128, True, 4, 4, 1), (64, False, 7, 6, 1),
                (64, True, 0, 8, 1), (128, False, 3, 6, 1), (64, False, 16, 4, 1), (128, True, 7, 8, 1),
                (128, False, 1, 8, 2), (128, True, 4, 4, 2), (64, False, 7, 6, 2), (64, True, 0, 8, 2),
                (128, False, 3, 6, 2), (64, False, 16, 4, 2),
                (128, False, 0, 4, 3), (128, True, 1, 6, 3), (64, False, 2, 6, 3), (64, True, 0, 4, 3),
                (128, True, 2, 4, 3), (64, False, 1, 4, 3)]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("m", [1, 3, 8, 9, 16])
@pytest.mark.parametrize("group,sym,split,stages,variant", DECODE_CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decode_kernel_matches_reference(m, group, sym, split, stages, variant, dtype):
    n, k = 4096 + 16, 2048   # N not a multiple of 64: a partial tile
    fmt, q, reference = _weight(n, k, group, sym, dtype, 1000 * m + split)
    for tile_n in (64, 16):
        packed = reference.pack_w4(q, tile_n)
        x = torch.randn(m, k, device="cuda").to(dtype)
        b = torch.randn(n, device="cuda").to(dtype)
        out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
        assert cuda_w4.supports(x, fmt, packed, (n, k))
        cuda_w4.w4_decode(x, packed, (n, k), b, split, out=out, group=group, stages=stages, variant=variant)
        err = reference.rel_err(out, reference.ref_linear(x, "w4a16", q, b))
        assert err < 1e-2, f"tile_n={tile_n}: rel err {err:.2e}"


#: (group, sym, warps, K, bias): the decode by rows (VARIANT 4) over both groups, sym/asym, both warp
#: counts; K = 13 stages (uneven over the warps, idle warps at 16; at 8 warps and M = 3, 46 KiB of
#: dynamic shared memory: run 14's launch error, the default cap less the static part sums) and 112
#: (the 8B down's 14336: x's 8 rows then fill 229 KiB, past the H100's 227, so M = 8 there runs v7)
ROWS_CASES = [(128, False, 16, 1664, True), (64, True, 8, 1664, False), (128, True, 16, 2048, False),
              (64, False, 16, 14336, False), (128, False, 8, 14336, True)]


def _rows_runs(m, group, sym, warps, k, with_bias, dtype, variant, seed):
    """Per tile layout (64, then 16 rows) of a W4 weight with a partial tile (N = 1072): a decode by
    rows of fresh x into a NaN-poisoned y, checked against the contract; yields the call (x, weight,
    bias, warps bound; pass variant and out) and that y."""
    n = 1024 + 48
    fmt, q, reference = _weight(n, k, group, sym, dtype, seed)
    for tile_n in (64, 16):
        packed = reference.pack_w4(q, tile_n)
        x = torch.randn(m, k, device="cuda").to(dtype)
        b = torch.randn(n, device="cuda").to(dtype) if with_bias else None
        out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
        run = functools.partial(cuda_w4.w4_decode, x, packed, (n, k), b, warps, group=group, stages=4)
        run(out=out, variant=variant)
        err = reference.rel_err(out, reference.ref_linear(x, "w4a16", q, b))
        assert err < 1e-2, f"tile_n={tile_n}: rel err {err:.2e}"
        yield run, out


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("m", [1, 2, 3, 8])
@pytest.mark.parametrize("group,sym,warps,k,with_bias", ROWS_CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant", [4, 5])  # cuda_w4.ROWS (16 rows a CTA), ROWS64 (4 row tiles)
def test_decode_by_rows_matches_reference(m, group, sym, warps, k, with_bias, dtype, variant):
    """The decode by rows against the contract in both tile layouts with a partial tile (N = 1072;
    at tile_n 16 and 64 rows a CTA, the last CTA's fourth row tile is past the padded rows), bit-identical
    run to run (no split-K sums: the warps meet in shared memory in a fixed order)."""
    for run, out in _rows_runs(m, group, sym, warps, k, with_bias, dtype, variant, 31 * m + warps + k):
        again = run(variant=variant)
        assert torch.equal(again, out) or (m, k) == (8, 14336)  # there v7 runs: its split-K sums are not


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("m", [1, 2, 5, 8, 9, 13, 16])
@pytest.mark.parametrize("group,sym,warps,k,with_bias", ROWS_CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decode_by_rows_with_x_per_stage_matches_reference(m, group, sym, warps, k, with_bias, dtype):
    """VARIANT 6 (csrc/w4_rowsx.cuh: x from L1 per stage, q - z in the A registers) against the contract
    at one and two token columns (M = 9, 13: a partly empty second column), both tile layouts, a
    partial tile, uneven and empty K slices; bit-identical through a CUDA graph; and within fp32
    summation order of the staged-x rows kernel (VARIANT 4, or its v7 fallback) at M <= 8."""
    for run, out in _rows_runs(m, group, sym, warps, k, with_bias, dtype, cuda_w4.ROWS_X, 17 * m + warps + k):
        graph_out = torch.empty_like(out)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            run(out=graph_out, variant=cuda_w4.ROWS_X)
        g.replay()
        assert torch.equal(graph_out, out)
        if m <= 8:
            staged = run(variant=cuda_w4.ROWS)
            assert (out.float() - staged.float()).norm() / staged.float().norm() < 2e-3


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("m,warps", [(1, 8), (3, 16), (8, 8), (9, 4), (13, 8), (16, 16)])
@pytest.mark.parametrize("group,sym,k", [(128, False, 2048), (64, True, 1664), (128, True, 4096)])
@pytest.mark.parametrize("act", ["silu", "gelu_pytorch_tanh"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rows_with_x_per_stage_glu_is_linear_then_act_mul(m, warps, group, sym, k, act, dtype):
    """VARIANT 6's GLU (w4_rowsx.cuh: half the warps on gate's rows, half on up's, act(gate) * up in the
    store) on a fused [gate; up] of 2 x 1072 rows, both tile layouts (at 64 rows the padding is past
    up's last row): within fp32 summation order of the same kernel's gate|up followed by
    glue.act_mul, which rounds the same way; near the float64 contract; bit-identical re-runs and
    graph replays. The builds it lacks are refused (-1): a bias, another variant, N % 32 != 0."""
    from turbopack.inference.config import Activation
    from turbopack.inference.kernels import glue

    activation, inter = Activation(act), 1072
    fmt, q, reference = _weight(2 * inter, k, group, sym, dtype, 97 * m + k + warps)
    for tile_n in (64, 16):
        packed = reference.pack_w4(q, tile_n)
        x = torch.randn(m, k, device="cuda").to(dtype)
        run = functools.partial(cuda_w4.w4_decode, x, packed, (2 * inter, k), None, warps, group=group, stages=4,
                                variant=cuda_w4.ROWS_X)
        h = run(glu=activation)
        assert h.shape == (m, inter) and h.dtype == dtype
        two = glue.act_mul(run(), activation)
        assert reference.rel_err(h, two.float()) < 2e-3, tile_n
        gu = reference.ref_linear(x, "w4a16", q, None).double()
        g, u = gu[:, :inter], gu[:, inter:]
        act_g = g * torch.sigmoid(g if activation is Activation.SILU else
                                  1.5957691216057308 * (g + 0.044715 * g ** 3))
        assert reference.rel_err(h, act_g * u) < 1e-2, tile_n
        assert torch.equal(run(glu=activation), h)
        out = torch.empty_like(h)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run(out=out, glu=activation)
        graph.replay()
        assert torch.equal(out, h)
    b = torch.randn(2 * inter, device="cuda").to(dtype)
    for bad in (dict(bias=b), dict(variant=cuda_w4.ROWS), dict(shape=(2 * inter - 16, k))):
        args = dict(bias=None, variant=cuda_w4.ROWS_X, shape=(2 * inter, k)) | bad
        with pytest.raises(RuntimeError, match="code -1"):
            cuda_w4.w4_decode(x, packed, args["shape"], args["bias"], warps, group=group, stages=4,
                              variant=args["variant"], glu=activation)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("m", [9, 16])
@pytest.mark.parametrize("group,sym,k,with_bias", [(128, False, 1664, True), (64, True, 14336, False),
                                                   (128, True, 2048, True), (64, False, 1536, False)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rows_with_x_per_stage_in_4_warps_at_two_token_columns(m, group, sym, k, with_bias, dtype):
    """VARIANT 6's two-column build in 4 warps a CTA (5 CTAs an SM: rowsx_ctas) against the contract,
    with uneven K slices (1664 = 13 stages; 1536 = 12, 3 a warp), and within fp32 summation order of
    the same kernel in 8 warps; 4 warps at one column is refused (not built)."""
    warps = 4
    for run, out in _rows_runs(m, group, sym, warps, k, with_bias, dtype, cuda_w4.ROWS_X, 23 * m + warps + k):
        eight = run.func(*run.args[:4], 8, **run.keywords, variant=cuda_w4.ROWS_X)
        assert (out.float() - eight.float()).norm() / eight.float().norm() < 2e-3
        assert torch.equal(run(variant=cuda_w4.ROWS_X), out)
    x1 = torch.randn(1, 128, device="cuda").bfloat16()
    fmt, q, reference = _weight(64, 128, 64, True, torch.bfloat16, 3)
    with pytest.raises(RuntimeError, match="code -1"):
        cuda_w4.w4_decode(x1, reference.pack_w4(q, 64), (64, 128), None, warps, group=64, stages=4,
                          variant=cuda_w4.ROWS_X)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("m", [1, 9, 16])
def test_decode_by_rows_falls_back_to_v7(m):
    """Where rows cannot run, v7 at the default split does: M > 8 (VARIANT 4: one token column) and
    scales not 16-byte aligned (a view one element in; VARIANT 6 too); a row stride past K reads the
    right rows (VARIANT 6 at M = 9, 16 runs itself with it)."""
    n, k, group = 1024 + 48, 2048, 64
    fmt, q, reference = _weight(n, k, group, False, torch.bfloat16, 5 + m)
    packed = reference.pack_w4(q, 64)
    wide = torch.randn(m, k + 64, device="cuda").bfloat16()
    x = wide[:, :k]
    want = reference.ref_linear(x, "w4a16", q, None)
    odd = dict(packed)
    for key in ("scales", "zeros"):
        t = packed[key]
        odd[key] = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:].view(t.shape).copy_(t)
    for p in (packed, odd):
        for variant in (cuda_w4.ROWS, cuda_w4.ROWS_X):  # ROWS_X falls back on the unaligned view only
            y = cuda_w4.w4_decode(x, p, (n, k), None, 8, group=group, stages=4, variant=variant)
            assert reference.rel_err(y, want) < 1e-2


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("m", [1, 5, 16])
@pytest.mark.parametrize("group,sym,split", [(128, False, 1), (64, True, 3), (128, True, 7)])
def test_v6_v7_and_v8_match_v5(m, group, sym, split):
    """v6 moves v5's all-ones MMAs into a per-CTA prologue, v7 reads the same scales from the ring,
    v8 runs v7's stages on stripes (here at all CTAs per SM and one), and all keep every other
    operation: the same y (a wrong table index, ring chunk or stripe would not be). v7 with scales
    and zeros that are not 16-byte aligned (a view one element in) runs v6, v8 runs v7."""
    n, k = 1024 + 48, 1536
    fmt, q, reference = _weight(n, k, group, sym, torch.bfloat16, 7 * m + split)
    packed = reference.pack_w4(q, 64)
    x = torch.randn(m, k, device="cuda").bfloat16()
    ys = [cuda_w4.w4_decode(x, packed, (n, k), None, split, group=group, stages=6, variant=v) for v in (0, 1, 2)]
    odd = dict(packed)
    for key in ("scales", "zeros"):
        if key in packed:
            t = packed[key]
            odd[key] = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:].view(t.shape).copy_(t)
    ys += [cuda_w4.w4_decode(x, packed, (n, k), None, per_sm, group=group, stages=st, variant=3)
           for per_sm, st in ((0, 4), (1, 6))]
    ys.append(cuda_w4.w4_decode(x, odd, (n, k), None, split, group=group, stages=8, variant=2))
    ys.append(cuda_w4.w4_decode(x, odd, (n, k), None, 1, group=group, stages=4, variant=3))
    # Bit for bit nearly everywhere: v6's per-CTA sums of x enter the fp32 accumulation in another
    # order, which can flip a 16-bit rounding (the H200 showed it for v6 at group 64, sym, split 3,
    # M = 16; exact in the other 8 cases). A wrong index or ring chunk would be wrong everywhere.
    for y in ys[1:]:
        differ = (y != ys[0]).float().mean().item()
        assert differ < 0.01 and reference.rel_err(y, ys[0].float()) < 1e-3, (differ, reference.rel_err(y, ys[0]))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("m", [1, 9])
@pytest.mark.parametrize("group,sym,split,stages", [(128, False, 1, 4), (64, True, 3, 8), (128, True, 13, 6)])
def test_v7_prefetch_gives_the_same_bits(m, group, sym, split, stages):
    """PREFETCH only moves bytes toward L2 (csrc/w4_v67.cuh): y is v7's (bit for bit at one K slice), in both tile
    layouts (one contiguous range per CTA at 64 rows, four at 16), with slices shorter than the ring
    (split 13 over 12 stages: empty and one-stage CTAs), and chained with PDL in a CUDA graph."""
    from turbopack.inference.kernels import cuda_build

    n, k = 1024 + 48, 1536
    fmt, q, reference = _weight(n, k, group, sym, torch.bfloat16, 3 * m + split)
    x = torch.randn(m, k, device="cuda").bfloat16()
    for tile_n in (64, 16):
        packed = reference.pack_w4(q, tile_n)
        y7 = cuda_w4.w4_decode(x, packed, (n, k), None, split, group=group, stages=stages, variant=2)
        pf = cuda_w4.w4_decode(x, packed, (n, k), None, split, group=group, stages=stages, variant=2, prefetch=True)
        same(pf, y7, split)
        assert reference.rel_err(pf, reference.ref_linear(x, "w4a16", q)) < 1e-2
    cuda_build.refresh_pdl()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        h = cuda_w4.w4_decode(x, packed, (n, k), None, split, group=group, stages=stages, variant=2, prefetch=True)
        h2 = cuda_w4.w4_decode(x, packed, (n, k), None, split, group=group, stages=stages, variant=2, prefetch=True)
    g.replay()
    torch.cuda.synchronize()
    y16 = cuda_w4.w4_decode(x, packed, (n, k), None, split, group=group, stages=stages, variant=2)
    same(h, y16, split)
    same(h2, y16, split)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("m", [1, 8, 9])
@pytest.mark.parametrize("group,sym,split,stages", [(128, False, 2, 4), (64, True, 4, 6), (128, True, 9, 4),
                                                    (128, False, 16, 6), (64, False, 3, 8)])
def test_v7_cluster_split_k_matches_the_global_path(m, group, sym, split, stages):
    """CLUSTER: a row tile's split-K CTAs sum their partials in their thread-block cluster's shared
    memory (csrc/common.cuh cluster_sum) instead of the fp32 workspace. y against the
    contract and the global path's (whose atomics may order the sums differently: ``same``), the
    same bits run after run and from a CUDA graph (the cluster sums in rank order), in both tile
    layouts; splits past 8 (a non-portable cluster), uneven slices (9, 3 over 12 stages), and where
    no cluster kernel is built (two token columns at M = 9, ring 8) the global path."""
    n, k = 1024 + 48, 1536
    fmt, q, reference = _weight(n, k, group, sym, torch.bfloat16, 11 * m + split)
    x = torch.randn(m, k, device="cuda").bfloat16()
    kw = dict(group=group, stages=stages, variant=2)
    # the global path's atomics sum in timing order: run 12 saw its bits differ at split 16, M = 9
    built = m <= cuda_w4.CLUSTER_M_MAX and stages in cuda_w4.CLUSTER_STAGES

    def again(got, want):  # the cluster's rank-order sum: the same bits; else the global path's
        same(got, want, 1 if built else split)

    for tile_n in (64, 16):
        packed = reference.pack_w4(q, tile_n)
        y = cuda_w4.w4_decode(x, packed, (n, k), None, split, **kw, cluster=True)
        again(cuda_w4.w4_decode(x, packed, (n, k), None, split, **kw, cluster=True), y)
        same(y, cuda_w4.w4_decode(x, packed, (n, k), None, split, **kw), split)
        assert reference.rel_err(y, reference.ref_linear(x, "w4a16", q)) < 1e-2
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        h = cuda_w4.w4_decode(x, packed, (n, k), None, split, **kw, cluster=True)
    g.replay()
    torch.cuda.synchronize()
    again(h, y)


def same(y, want, split):
    """One K slice: the same bits. Split K: the slices' fp32 sums meet in atomics, whose order varies
    from run to run, so y may differ from ``want`` in the last place of a few elements."""
    from turbopack.inference.kernels import reference

    if split == 1:
        assert torch.equal(y, want)
    else:
        assert (y != want).float().mean().item() < 0.01 and reference.rel_err(y, want.float()) < 1e-3


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("group,sym", [(128, False), (64, True)])
def test_v8_long_stripes_match_v7(m, group, sym):
    """One CTA per SM over 257 tiles x 8 stages: stripes of 15-16 items (on 132 SMs) hold whole tiles
    (one arrival: y stored directly), and their sum-of-x tables wrap (8 entries)."""

    n, k = 16384 + 48, 1024
    fmt, q, reference = _weight(n, k, group, sym, torch.bfloat16, 11 * m + group)
    packed = reference.pack_w4(q, 64)
    x = torch.randn(m, k, device="cuda").bfloat16()
    b = torch.randn(n, device="cuda").bfloat16()
    y7 = cuda_w4.w4_decode(x, packed, (n, k), b, 2, group=group, stages=4, variant=2)
    for per_sm in (1, 2):
        y8 = cuda_w4.w4_decode(x, packed, (n, k), b, per_sm, group=group, stages=6, variant=3)
        differ = (y8 != y7).float().mean().item()
        assert differ < 0.01 and reference.rel_err(y8, y7.float()) < 1e-3, (per_sm, differ)
        assert reference.rel_err(y8, reference.ref_linear(x, "w4a16", q, b)) < 1e-2


def _v8_walk(lo: int, hi: int, stages: int) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """w4_decode_v8_kernel's main loop as the CTA runs it: the (tile, stage) of each item, the tiles
    it flushes (store_tile_at) in order, and the sum-of-x table entry each item reads."""
    tile, stage, e = lo // stages, lo % stages, 0
    seen, flushed, entries = [], [], []
    for w in range(lo, hi):
        seen.append((tile, stage))
        entries.append(e)
        e = 0 if e + 1 == stages else e + 1
        stage += 1
        if stage == stages or w + 1 == hi:
            flushed.append(tile)
            stage, tile = 0, tile + 1
    return seen, flushed, entries


def test_v8_stripe_schedule():
    """A model of v8's schedule (csrc/w4.cu, cuda_w4.v8_*): the stripes cover every (tile, stage)
    item exactly once, in order, each CTA streaming floor or ceil(W / grid) of them; each tile gets
    exactly v8_arrivals flushes (the count its last CTA completes: one too many or too few would leave
    y unwritten or read a half-summed workspace); every item's sum-of-x entry exists in the table the
    launch allocates and holds its stage."""
    combos = 0
    for tiles in (1, 2, 3, 17, 64, 65, 96, 257, 448):
        for stages in (1, 2, 8, 16, 32, 112):
            items = tiles * stages
            for sms, per_sm in ((1, 1), (7, 3), (132, 1), (132, 2), (132, 8), (114, 6)):
                grid = cuda_w4.v8_grid(tiles, stages, sms, per_sm)
                bound = min(stages, -(-items // min(items, sms)))  # the launcher's occupancy bound
                table = min(stages, -(-items // grid))              # the launch's table entries
                assert table <= bound
                flushes = [0] * tiles
                covered = []
                for cta in range(grid):
                    lo, hi = cuda_w4.v8_stripe(cta, items, grid)
                    assert items // grid <= hi - lo <= -(-items // grid)
                    seen, flushed, entries = _v8_walk(lo, hi, stages)
                    assert seen[0] == divmod(lo, stages) and seen[-1] == divmod(hi - 1, stages)
                    assert [t * stages + s for t, s in seen] == list(range(lo, hi))
                    assert flushed == sorted(set(t for t, _ in seen))
                    for j, ent in enumerate(entries):  # entry ent holds stage (lo + ent) mod S (sum_x)
                        assert ent < min(hi - lo, stages) <= table and (lo + ent) % stages == (lo + j) % stages
                    assert all(cuda_w4.v8_owner(w, items, grid) == cta for w in (lo, hi - 1))
                    covered += range(lo, hi)
                    for t in flushed:
                        flushes[t] += 1
                assert covered == list(range(items)), (tiles, stages, grid)
                assert flushes == [cuda_w4.v8_arrivals(t, stages, items, grid) for t in range(tiles)]
                combos += 1
    assert combos == 9 * 6 * 6


def test_v6_sum_table_fits_its_allocation():
    """A model of w4_decode_v6_kernel's stage split and sum-of-x table (csrc/w4.cu): the CTAs'
    stage ranges cover every stage once, and the largest index sum_x writes or the loop reads is
    inside the xsum_bytes the launcher allocates (past kXsumMax the launcher runs v5)."""
    for k in (128, 256, 1920, 2048, 4096, 14336, 28672):
        stages = k // 128
        for split in range(1, min(stages, 40) + 1):
            per = -(-stages // split)
            covered = []
            for by in range(split):
                s_lo = by * per
                s_cta = max(s_lo, min(stages, s_lo + per))
                covered += range(s_lo, s_cta)
                for group in (64, 128):
                    ng = 128 // group
                    for ntok in (1, 2):
                        top = (((s_cta - s_lo - 1) * ng + ng - 1) * ntok + ntok - 1) * 4 + 3
                        assert s_cta == s_lo or 8 * (top + 1) <= cuda_w4.xsum_bytes(per, group, ntok)
            assert covered == list(range(stages)), (k, split)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dequantize_is_the_contract_bit_for_bit(group, sym, dtype):
    n, k = 1024 + 16, (576 if group < 128 else 640)   # a partial tile in N; K not a multiple of 128 where G allows
    fmt, q, reference = _weight(n, k, group, sym, dtype, group)
    for tile_n in (64, 16):
        packed = reference.pack_w4(q, tile_n)
        w = cuda_w4.dequantize(packed, (n, k), group, dtype)
        assert torch.equal(w, reference.w4_weight16(q, dtype)), f"tile_n={tile_n}"
        x = torch.randn(37, k, device="cuda").to(dtype)
        b = torch.randn(n, device="cuda").to(dtype)
        y = cuda_w4.dq_mm(x, packed, (n, k), b, group=group)
        assert reference.rel_err(y, reference.ref_linear(x, "w4a16", q, b)) < 1e-2


@pytest.mark.parametrize("base,shift", [(128.0, 16), (1024.0, 13)])
def test_magic_plus_zero_point_from_its_bits(base, shift):
    """w4_stage.cuh slot_scale_offset builds the float M + z as M's bits + (z << (23 - log2 M)) (M =
    128 for bf16, 1024 for fp16; the kernel's kUlpShift): exact for every 4-bit zero point."""
    import numpy as np

    src = (cuda_build.CSRC / "w4_stage.cuh").read_text()
    assert "kUlpShift = Half16<T>::kBase == 128.f ? 16 : 13" in src  # the shifts tested here
    z = np.arange(16, dtype=np.int32)
    bits = np.array([base], dtype=np.float32).view(np.int32) + (z << shift)
    assert np.array_equal(bits.view(np.float32), base + z.astype(np.float32))
    assert 23 - shift == int(np.log2(base))


@pytest.mark.parametrize("tn", [16, 64])
@pytest.mark.parametrize("np_rows,kt,split,stages", [(128, 24, 1, 4), (1024 + 48, 24, 5, 8), (80, 4, 2, 6)])
def test_v7_prefetch_ranges_are_the_bytes_the_ring_reads_later(tn, np_rows, kt, split, stages):
    """csrc/w4_v67.cuh's PREFETCH ranges (thread t of a CTA: layout tile t of its 64 rows, stages
    [s_lo + STAGES - 1, s_cta)) against the weight bytes its warps' ring copies read from that stage
    on (w4_v67.cuh: wsrc = ((tn KT + 2 s) TN + r0) 2 + lane in uint4, the second tile TN * 2 further):
    the same set of bytes, nothing before the ring's start, nothing outside the CTA's rows."""
    n_stages = kt // 2
    per = -(-n_stages // split)
    for bx in range(-(-np_rows // 64)):
        for by in range(split):
            s_lo = by * per
            s_cta = max(s_lo, min(n_stages, s_lo + per))
            start = s_lo + stages - 1
            read, fetched = set(), set()
            for warp in range(4):
                n0 = bx * 64 + warp * 16
                if n0 >= np_rows:
                    continue
                t, r0 = n0 // tn, n0 % tn
                for s in range(start, s_cta):
                    for lane in range(32):
                        for tile in range(2):
                            u4 = ((t * kt + 2 * s) * tn + r0) * 2 + lane + tile * tn * 2
                            read.update(range(16 * u4, 16 * u4 + 16))
            for thread in range(64 // tn):
                rows0 = bx * 64 + thread * tn
                if rows0 < np_rows and start < s_cta:
                    at = ((rows0 // tn) * kt + 2 * start) * tn * 2 * 16
                    fetched.update(range(at, at + 2 * (s_cta - start) * tn * 32))
            assert fetched == read, (bx, by)


def test_knockout_masks_are_the_headers_and_off_in_real_builds():
    """benchmarks/device/knockout.py names csrc/common.cuh's knockout bits (diagnostic builds that
    leave a part of a kernel out); the runtime's nvcc command defines none of them, so every real
    library is built with TP_KNOCKOUT 0."""
    import importlib.util
    import re
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "device" / "knockout.py"
    spec = importlib.util.spec_from_file_location("knockout", path)
    ko = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ko)
    header = (cuda_build.CSRC / "common.cuh").read_text()
    bits = {name: int(v) for name, v in re.findall(r"kKo(\w+) = (\d+),", header)}
    assert bits == {"Store": ko.STORE, "Math": ko.MATH, "Load": ko.LOAD, "Scales": ko.SCALES, "X": ko.X,
                    "Decode": ko.DECODE, "Epilogue": ko.EPILOGUE}
    assert re.search(r"#ifndef TP_KNOCKOUT\n#define TP_KNOCKOUT 0\n#endif", header)
    cmd = cuda_build.nvcc_command("nvcc", cuda_w4.SRC, (9, 0), Path("x.so"))
    assert not any(a.startswith("-D") for a in cmd)
    assert "-DTP_KNOCKOUT=6" in cuda_build.nvcc_command("nvcc", cuda_w4.SRC, (9, 0), Path("x.so"), ("TP_KNOCKOUT=6",))
    # a variant's file is keyed by its mask and by the source's text, as the runtime's cache is
    for mod, variants in ko.VARIANTS.items():
        names = {ko.lib_file(Path("f"), mod, m).name for m in variants.values()}
        assert len(names) == len(variants) and all(n.startswith(mod.SRC.stem + "_") for n in names)
    assert ko.lib_file(Path("f"), cuda_w4, 0) == cuda_build.lib_path(cuda_w4.SRC, ko.CAP, "knockout-0", Path("f"))


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
def test_speed_of_light_reader_compiles_for_sm80_and_sm90a(tmp_path):
    """benchmarks/device/sol.py's reader (one launch streaming B bytes: the floor per layer size)
    builds for the two arches CI compiles, without spills; on the device it checks its own sums
    against torch before it times anything."""
    from pathlib import Path

    src = Path(__file__).resolve().parents[3] / "benchmarks" / "device" / "sol_read.cu"
    cmd = [NVCC, "-c", "-O3", "-std=c++17", "-I", str(cuda_build.CSRC), "-Xptxas", "-v", cuda_w4.gencode((8, 0)),
           cuda_w4.gencode((9, 0)), str(src), "-o", str(tmp_path / "sol.o")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "sm_80" in res.stderr and "sm_90a" in res.stderr
    assert [ln for ln in res.stderr.splitlines() if "spill" in ln and not ln.strip().startswith("0 bytes stack")] == []
