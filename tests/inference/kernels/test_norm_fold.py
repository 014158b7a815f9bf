"""kernels.fold: the residual add and the next RMSNorm folded into two decode linears' stores. On
the CPU, the fold's math against add_rmsnorm's (one rounding fewer: within bf16's); on a GPU, the
W4 and 8-bit decodes by rows as producer (z, the new residual, the partial sums of squares) bit for bit
against its own plain output passed through the contract (``fold.reference``), as consumer
(plain GEMV and GLU) near the float64 contract and within fp32 order of its plain output scaled
by 1 / rms, bit-identical re-runs and graph replays; and the fast path's decode step with the
folds against the same step without them."""

from __future__ import annotations

import functools

import pytest
import torch

from turbopack.inference.kernels import fold
from turbopack.inference.norms import RMSNorm

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _add_rmsnorm(y, residual, norm):
    """kernels.glue.add_rmsnorm's Llama style in torch: round(round(r / rms(r)) * w), r = round(y + res)."""
    r = (y.float() + residual.float()).to(y.dtype)
    rf = r.float()
    x_hat = (rf * torch.rsqrt(rf.square().mean(-1, keepdim=True) + norm.eps)).to(y.dtype)
    return (x_hat.float() * norm.weight.float()).to(y.dtype), r


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fold_is_add_rmsnorm_then_linear_up_to_one_rounding(dtype):
    gen = torch.Generator().manual_seed(0)
    m, n, k_out = 5, 256, 96
    y = torch.randn(m, n, generator=gen).to(dtype)
    res = (torch.randn(m, n, generator=gen) * 3).to(dtype)
    norm = RMSNorm(n, 1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(n, generator=gen) + 0.5)
    w = torch.randn(k_out, n, generator=gen, dtype=torch.float64)
    h, r = _add_rmsnorm(y, res, norm)
    z, r2, ss = fold.reference(y, res, norm.weight.data)
    assert torch.equal(r2, r) and ss.shape == (m, n // 16) and ss.dtype == torch.float32
    assert torch.allclose(ss.sum(-1), r.float().square().sum(-1), rtol=1e-5)
    want = h.double() @ w.T
    got = (z.double() @ w.T) * fold.inv_rms(ss, n, norm.eps).double()[:, None]
    err = ((got - want).norm() / want.norm()).item()
    assert 0 < err < 4e-3, err  # bf16's half-ulp is 2e-3; 0 would mean the test compared a thing with itself


def _case(m, n, k, group, sym, dtype, seed, tile_n=64):
    from turbopack.formats import get_format
    from turbopack.inference.kernels import reference

    torch.manual_seed(seed)
    fmt = get_format("w4a16", group_size=group, sym=sym, scale_dtype=str(dtype).removeprefix("torch."))
    q = fmt.quantize(torch.randn(n, k, device="cuda"))
    return fmt, q, reference, reference.pack_w4(q, tile_n)


def _graph(fn, out):
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn(out)
    g.replay()
    torch.cuda.synchronize()
    return out


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("m,warps", [(1, 16), (3, 8), (8, 16), (9, 4), (16, 8)])
@pytest.mark.parametrize("n,k,group,sym,tile_n,with_bias", [(2048, 4096, 128, False, 64, False),
                                                            (1072, 1664, 64, True, 64, True),
                                                            (1536, 2048, 128, True, 16, False)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_producer_store_is_its_output_through_the_contract(m, warps, n, k, group, sym, tile_n, with_bias, dtype):
    """The store of a producer (o_proj, down) against fold.reference of the same kernel's plain
    output: z and the new residual bit for bit (the same sums in the same order, rounded alike), the
    partial sums of squares within fp32 order (a 16-row shuffle tree; the padded rows' parts zero)."""
    from turbopack.inference.kernels import cuda_w4

    _, _, _, packed = _case(m, n, k, group, sym, dtype, 7 * m + n, tile_n)
    x = torch.randn(m, k, device="cuda").to(dtype)
    bias = torch.randn(n, device="cuda").to(dtype) if with_bias else None
    res = (torch.randn(m, n, device="cuda") * 4).to(dtype)
    weight = (torch.rand(n, device="cuda") + 0.5).to(dtype)
    run = functools.partial(cuda_w4.w4_decode, x, packed, (n, k), bias, warps, group=group, stages=4,
                            variant=cuda_w4.ROWS_X)
    np16 = packed["qweight"].shape[0] * packed["qweight"].shape[2] // 16
    r_out, ss = torch.empty_like(res), torch.full((m, np16), float("nan"), device="cuda")
    args = fold.FoldArgs(res=res, weight=weight, r_out=r_out, ss=ss)
    z = run(fold=args)
    z_ref, r_ref, ss_ref = fold.reference(run(), res, weight)
    assert torch.equal(z, z_ref) and torch.equal(r_out, r_ref)
    assert torch.allclose(ss[:, : n // 16], ss_ref, rtol=1e-5) and torch.all(ss[:, n // 16:] == 0)
    again = torch.empty_like(z)
    assert torch.equal(_graph(lambda out: run(out=out, fold=args), again), z)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("m,warps", [(1, 16), (3, 8), (8, 16), (9, 4), (16, 8)])
@pytest.mark.parametrize("n,k,group,sym,tile_n", [(2048, 4096, 128, False, 64), (2144, 1536, 64, True, 16)])
@pytest.mark.parametrize("act", [None, "silu", "gelu_pytorch_tanh"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_consumer_scales_its_sums_by_inv_rms(m, warps, n, k, group, sym, tile_n, act, dtype):
    """A consumer (q|k|v; gate|up with the GLU) reading a producer's z: its plain output scaled by
    each token's 1 / rms within fp32 order (GLU: glue.act_mul of the scaled gate|up, where gate and
    up are rounded twice, as stored and as scaled: within 1e-2, 4-5e-3 measured in bf16), near the
    float64 contract, bit-identical re-runs and graph replays."""
    from turbopack.inference.config import Activation
    from turbopack.inference.kernels import cuda_w4, glue

    activation = Activation(act) if act else None
    _, q, reference, packed = _case(m, n, k, group, sym, dtype, 11 * m + n, tile_n)
    z = torch.randn(m, k, device="cuda").to(dtype)
    parts = k // 16
    # a scale per token, 1 / rms about 1/8 (so fp16's act(gate) * up stays finite)
    ss = (torch.rand(m, parts, device="cuda") + 0.5) * (64 * k / parts) * (torch.arange(m, device="cuda")[:, None] + 1)
    eps = 1e-5
    inv = fold.inv_rms(ss, k, eps)
    run = functools.partial(cuda_w4.w4_decode, z, packed, (n, k), None, warps, group=group, stages=4,
                            variant=cuda_w4.ROWS_X)
    args = fold.FoldArgs(ss_in=ss, eps=eps)
    y = run(fold=args, glu=activation)
    plain = run().float() * inv[:, None]
    full = reference.ref_linear(z, "w4a16", q, None).double() * inv.double()[:, None]
    if activation is not None:
        plain = glue.act_mul(plain.to(dtype), activation).float()
        g, u = full[:, : n // 2], full[:, n // 2:]
        gelu = activation is Activation.GELU_TANH
        full = g * torch.sigmoid(1.5957691216057308 * (g + 0.044715 * g ** 3) if gelu else g) * u
    assert reference.rel_err(y, plain) < (1e-2 if activation else 3e-3)
    assert reference.rel_err(y, full) < 1e-2
    assert torch.equal(run(fold=args, glu=activation), y)
    again = torch.empty_like(y)
    assert torch.equal(_graph(lambda out: run(out=out, fold=args, glu=activation), again), y)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("fmt_name,per_tensor,tile_n,tile_k", [("w8a16", False, 64, 64), ("fp8", True, 16, None),
                                                               ("fp8", False, 16, 64)])
@pytest.mark.parametrize("m,warps,variant,stages", [(1, 8, 4, 4), (5, 16, 6, 2), (16, 16, 4, 6)])
@pytest.mark.parametrize("act", [None, "silu"])
def test_8bit_rows_fold(fmt_name, per_tensor, tile_n, tile_k, m, warps, variant, stages, act):
    """The 8-bit decode by rows (w8.cu, VARIANT 4 and its wide slots 6) as producer (z and the new
    residual bit for bit against fold.reference of its plain output) and consumer (plain and GLU:
    within fp32 order of its plain output scaled by 1 / rms; the GLU's reference rounds twice, as
    the W4 consumer's), both dtypes, bit-identical re-runs."""
    from turbopack.formats import get_format
    from turbopack.inference.config import Activation
    from turbopack.inference.kernels import cuda_w8, glue, reference

    activation, n, k = Activation(act) if act else None, 2 * 1056, 1536
    torch.manual_seed(13 * m + warps)
    q = get_format(fmt_name, **({"per_tensor": True} if per_tensor else {})).quantize(
        torch.randn(n, k, device="cuda") * 0.02)
    packed = reference.pack_bytes(q["qweight"], q["scales"], tile_n, tile_k)
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.randn(m, k, device="cuda").to(dtype)
        run = functools.partial(cuda_w8.w8_decode, x, packed, (n, k), None, warps, stages=stages, variant=variant)
        if activation is None:
            res, weight = torch.randn(m, n, device="cuda").to(dtype), (torch.rand(n, device="cuda") + 0.5).to(dtype)
            r_out = torch.empty_like(res)
            ss = torch.full((m, cuda_w8.n_padded(packed["qweight"]) // 16), float("nan"), device="cuda")
            z = run(fold=fold.FoldArgs(res=res, weight=weight, r_out=r_out, ss=ss))
            z_ref, r_ref, ss_ref = fold.reference(run(), res, weight)
            assert torch.equal(z, z_ref) and torch.equal(r_out, r_ref), dtype
            assert torch.allclose(ss[:, : n // 16], ss_ref, rtol=1e-5) and torch.all(ss[:, n // 16:] == 0)
        ss_in = torch.rand(m, k // 16, device="cuda") + 0.1
        inv = fold.inv_rms(ss_in, k, 1e-6)
        args = fold.FoldArgs(ss_in=ss_in, eps=1e-6)
        y = run(fold=args, glu=activation)
        plain = run().float() * inv[:, None]
        if activation is not None:
            plain = glue.act_mul(plain.to(dtype), activation).float()
        assert reference.rel_err(y, plain) < (1e-2 if activation else 3e-3), dtype
        assert torch.equal(run(fold=args, glu=activation), y)


@pytest.mark.gpu
@gpu
def test_fold_builds_it_lacks_are_refused():
    """-1 for a fold outside VARIANT 6, a producer with the GLU or also a consumer, partials not in 4s."""
    from turbopack.inference.config import Activation
    from turbopack.inference.kernels import cuda_w4

    m, n, k = 2, 1024, 1024
    _, _, _, packed = _case(m, n, k, 128, False, torch.bfloat16, 3)
    x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
    res, weight = torch.randn(m, n, device="cuda").to(torch.bfloat16), torch.ones(n, device="cuda").to(torch.bfloat16)
    producer = fold.FoldArgs(res=res, weight=weight, r_out=torch.empty_like(res),
                                ss=torch.empty(m, n // 16, device="cuda"))
    consumer = fold.FoldArgs(ss_in=torch.ones(m, 64, device="cuda"), eps=1e-5)
    cases = [dict(fold=producer, variant=cuda_w4.ROWS), dict(fold=consumer, variant=cuda_w4.V7),
             dict(fold=producer, glu=Activation.SILU),
             dict(fold=fold.FoldArgs(res=res, weight=weight, r_out=res, ss=producer.ss, ss_in=consumer.ss_in)),
             dict(fold=fold.FoldArgs(ss_in=torch.ones(m, 62, device="cuda"), eps=1e-5)),
             dict(fold=fold.FoldArgs(res=res, weight=weight))]
    for case in cases:
        kw = dict(variant=cuda_w4.ROWS_X) | case
        with pytest.raises(RuntimeError, match="code -1"):
            cuda_w4.w4_decode(x, packed, (n, k), None, 8, group=128, stages=4, **kw)


def _w4_llama(hidden=512, inter=1024, layers=3, seed=0):
    """A tiny Llama in bf16 on the GPU with every linear W4A16 (w4_t64x64, the CUDA backend), fused."""
    from turbopack.formats import get_format
    from turbopack.inference.api import fuse_model
    from turbopack.inference.config import ModelConfig
    from turbopack.inference.model import build_model
    from turbopack.inference.qlinear import Backend, QuantLinear
    from turbopack.layouts import get_layout

    cfg = ModelConfig(vocab=128, hidden=hidden, intermediate=inter, n_layers=layers, n_heads=4, n_kv_heads=2,
                      head_dim=128, max_position_embeddings=64)
    model = build_model(cfg, device="cuda", dtype=torch.bfloat16)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    fmt, layout = get_format("w4a16"), get_layout("w4_t64x64")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.rand(p.shape, generator=gen, device="cuda") + 0.5 if name.endswith("norm.weight")
                    else torch.randn(p.shape, generator=gen, device="cuda") * 0.05)
        for layer in model.model.layers:
            for parent in (layer.self_attn, layer.mlp):
                for attr, lin in list(parent.named_children()):
                    if isinstance(lin, torch.nn.Linear):
                        shape = tuple(lin.weight.shape)
                        q = fmt.quantize(lin.weight.float().cpu())
                        packed = {s: t.cuda() for s, t in layout.pack(fmt, q, shape).items()}
                        setattr(parent, attr, QuantLinear.from_tensors(fmt, shape, packed, layout=layout,
                                                                       backend=Backend.CUDA))
    fuse_model(model)
    return model


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("batch", [1, 4])
def test_fastpath_step_with_folds_matches_the_step_without(batch, monkeypatch):
    """The fast path's decode with FOLD_NORMS (off by default: it measured slower) on a W4 Llama: its
    o_proj and down stores fold the norms (a Folded reaches attention's and the MLP's inputs) and the
    logits stay within bf16 rounding of the same steps with add_rmsnorm between the linears; the
    engine's CUDA graph replays decode the eager tokens."""
    from turbopack.inference import fastpath
    from turbopack.inference import kv_quant as KQ
    from turbopack.inference.generate import Engine

    monkeypatch.setattr(fastpath, "FOLD_NORMS", True)
    model = _w4_llama()
    ids = torch.randint(0, 128, (batch, 6), device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
    seen = []
    real_mlp = fastpath.mlp
    monkeypatch.setattr(fastpath, "mlp", lambda block, h, *a: seen.append(type(h).__name__) or real_mlp(block, h, *a))

    def steps():
        model.setup_caches(batch, 64, cache_cls=KQ.cache_factory("bf16", "triton"))
        out = [fastpath.forward(model, ids[:, :4], torch.arange(4, device="cuda"))[:, -1]]
        for i in (4, 5):
            out.append(fastpath.forward(model, ids[:, i:i + 1], torch.tensor([i], device="cuda"))[:, -1])
        return torch.stack(out, 1).float()

    folded = steps()
    assert seen[-3:] == ["Folded"] * 3, seen  # the last decode step's three layers
    monkeypatch.setattr(fastpath, "FOLD_NORMS", False)
    seen.clear()
    plain = steps()
    assert "Folded" not in seen
    assert torch.equal(folded[:, 0], plain[:, 0])  # a prefill (T > 1) folds nothing
    err = ((folded - plain).norm() / plain.norm()).item()
    assert 0 < err < 2e-2, err
    monkeypatch.setattr(fastpath, "FOLD_NORMS", True)
    model.kv_caches = None
    eager, _ = Engine(model, use_graphs=False).generate(ids, 6)
    graph, stats = Engine(model).generate(ids, 6)
    assert stats.cuda_graph and torch.equal(graph, eager)


def test_rows_kernels_count_each_layouts_padded_rows():
    """A producer's partial sums are one per 16 rows of what its packed codes hold: each layout of
    dispatch.ROWS_RUNNERS reports N rounded up to its tile height (not, say, a row-major layout's K)."""
    from turbopack.errors import TurbopackError
    from turbopack.formats import get_format
    from turbopack.inference.kernels import dispatch
    from turbopack.layouts import get_layout

    n, k = 1072, 384
    for name in dispatch.ROWS_RUNNERS.names():
        layout = get_layout(name)
        for fmt_name in ("w4a16", "w8a16", "w8a8", "fp8"):
            fmt = get_format(fmt_name)
            try:
                layout.check_format(fmt)
            except TurbopackError:
                continue
            spec = next(s for s in layout.packed_specs(fmt, (n, k)) if s.suffix == "qweight")
            rows = dispatch.ROWS_RUNNERS.get(name).n_padded(torch.empty(spec.shape, dtype=spec.dtype))
            assert n <= rows < n + layout.tile_n and rows % 16 == 0, (name, fmt_name, rows)
            break
        else:
            raise AssertionError(f"no format packs into {name}")
