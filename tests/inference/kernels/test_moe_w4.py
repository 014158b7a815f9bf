"""The grouped W4A16 MoE kernels against the per-expert loop of the layouts' CPU emulator.

Without CUDA they run in Triton's CPU interpreter on tiny shapes (hidden 128 or 256, intermediate
64 to 192; 96 rows leave a 64-row tile partial); routings that are awkward for the
alignment: an expert nobody chose, every token on one expert (a run longer than a block), T=1,
T*k not a multiple of BM. The reference applies the loop's roundings (each linear's output and
the activation rounded to the activations' dtype, the routing weight in fp32), so the tolerance
is the outputs' 16-bit rounding: relative Frobenius error < 1e-2 (fp16 activations measure ~2e-4
here), except bf16 in the interpreter, whose fp32 -> bf16 cast truncates instead of rounding: the
five chained roundings of g, u, act, h and y then drift by ~2e-2, so 4e-2 there (a wrong expert,
token or weight row gives ~1). The ``gpu`` test runs
Qwen3-30B-A3B's shapes on the device against the float64 contract.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")

from turbopack.formats import get_format  # noqa: E402
from turbopack.inference.kernels import epilogue, moe_w4, reference  # noqa: E402
from turbopack.layouts import emulate_linear, get_layout  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
if DEV == "cpu" and not epilogue.interpreting():
    pytest.skip("TRITON_INTERPRET=1 was not in effect when the kernels were imported", allow_module_level=True)

TOL = 1e-2


def tol(act: torch.dtype) -> float:
    return 4e-2 if act == torch.bfloat16 and DEV == "cpu" else TOL


def make_experts(n_exp, hidden, inter, layout_name, gen, pack=None, **params):
    """Per expert (q, packed) of gate, up, down, plus the stacked StackedW4 of each on DEV."""
    fmt = get_format("w4a16", **params)
    layout = get_layout(layout_name)
    pack = pack or (lambda q, shape: layout.pack(fmt, q, shape))
    experts, stacks = [], []
    for shape in ((inter, hidden), (inter, hidden), (hidden, inter)):
        qs = [fmt.quantize(torch.randn(shape, generator=gen, device=gen.device) * 0.05) for _ in range(n_exp)]
        packed = [pack(q, shape) for q in qs]
        experts.append((qs, packed, shape))
        cat = {k: torch.stack([p[k] for p in packed]).to(DEV) for k in packed[0]}
        stacks.append(moe_w4.StackedW4(cat["qweight"], cat["scales"], cat.get("zeros"), shape, fmt.group_size))
    return fmt, layout, experts, stacks


def loop_reference(x, weights, idx, linear):
    """The MoE loop with ``linear(x, which, e)`` (which: 0 gate, 1 up, 2 down) for each expert."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in idx.unique().tolist():
        tok, pos = torch.where(idx == e)
        xe = x[tok]
        h = (F.silu(linear(xe, 0, e)) * linear(xe, 1, e)).to(x.dtype)
        out.index_add_(0, tok, linear(h, 2, e).float() * weights[tok, pos, None].float())
    return out


def emulated(fmt, layout, experts):
    def linear(x, which, e):
        _, packed, shape = experts[which]
        return emulate_linear(x.cpu(), fmt, layout, packed[e], shape).to(x.device)

    return linear


ROUTINGS = {  # name -> ids [T, k] from (T, k, E, generator)
    "random": lambda t, k, e, g: torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)]),
    "one_expert": lambda t, k, e, g: torch.arange(k).repeat(t, 1),  # every token on experts 0..k-1
    "skip_expert_2": lambda t, k, e, g: torch.stack([torch.tensor([0, 1, 3, 4, 5][:k]).roll(i) for i in range(t)]),
}

CASES = [  # (layout, E, hidden, inter, T, k, group, sym, scale dtype, act, routing)
    ("w4_t64x64", 6, 128, 96, 1, 2, 32, True, "bfloat16", torch.bfloat16, "random"),  # 96 rows: a partial tile
    ("w4_t16x64", 6, 128, 64, 19, 2, 64, False, "float16", torch.float16, "random"),
    ("w4_t64x64", 6, 256, 128, 33, 2, 128, False, "bfloat16", torch.bfloat16, "one_expert"),
    ("w4_t16x64", 6, 256, 128, 7, 3, 128, True, "bfloat16", torch.float16, "skip_expert_2"),
    ("w4_t64x64", 5, 128, 192, 4, 2, 64, False, "bfloat16", torch.bfloat16, "random"),
]


@pytest.mark.parametrize("layout_name,n_exp,hidden,inter,t,k,group,sym,sdt,act,routing", CASES)
def test_grouped_matches_the_emulated_loop(layout_name, n_exp, hidden, inter, t, k, group, sym, sdt, act, routing):
    gen = torch.Generator().manual_seed(t * 31 + hidden)
    fmt, layout, experts, (gate, up, down) = make_experts(n_exp, hidden, inter, layout_name, gen, group_size=group,
                                                          sym=sym, scale_dtype=sdt)
    x = torch.randn(t, hidden, generator=gen).to(act)
    idx = ROUTINGS[routing](t, k, n_exp, gen)
    weights = torch.softmax(torch.randn(t, k, generator=gen), -1)
    y = moe_w4.grouped_moe(x.to(DEV), weights.to(DEV), idx.to(DEV), gate, up, down).cpu()
    want = loop_reference(x, weights, idx, emulated(fmt, layout, experts))
    assert y.dtype == act and y.shape == x.shape
    err = reference.rel_err(y, want)
    assert err < tol(act), f"rel err {err:.2e}"


def test_one_token_on_tensor_cores_and_the_gemv_form_agree():
    """T = 1 runs the GEMV form (BM = 1) by default; the tensor-core form (BM = 16, 15 rows masked)
    computes the same; BM = 1 for several tokens (an expert read per token) is refused."""
    gen = torch.Generator().manual_seed(2)
    fmt, layout, experts, stacks = make_experts(4, 128, 64, "w4_t16x64", gen, group_size=64, sym=False)
    x = torch.randn(1, 128, generator=gen).bfloat16().to(DEV)
    idx, weights = torch.tensor([[2, 0]], device=DEV), torch.tensor([[0.7, 0.3]], device=DEV)
    assert moe_w4.default_config(2, 4, 1).block_m == 1
    gemv = moe_w4.grouped_moe(x, weights, idx, *stacks, path=moe_w4.MoEPath.TRITON)
    tc = moe_w4.grouped_moe(x, weights, idx, *stacks, cfg=moe_w4.MoEConfig(block_m=16))
    want = loop_reference(x.cpu(), weights.cpu(), idx.cpu(), emulated(fmt, layout, experts))
    assert reference.rel_err(gemv.cpu(), want) < tol(torch.bfloat16)
    assert reference.rel_err(tc.cpu(), want) < tol(torch.bfloat16)
    with pytest.raises(ValueError, match="one token"):
        moe_w4.grouped_moe(x.repeat(2, 1), weights.repeat(2, 1), idx.repeat(2, 1), *stacks,
                           cfg=moe_w4.MoEConfig(block_m=1))


@pytest.mark.parametrize("t,k,n_exp,bm", [(1, 8, 128, 16), (1, 8, 128, 1), (64, 8, 128, 16), (33, 2, 6, 16),
                                          (5, 3, 4, 64)])
def test_align_sorts_pairs_by_expert_and_cuts_blocks(t, k, n_exp, bm):
    gen = torch.Generator().manual_seed(t + k)
    idx = torch.stack([torch.randperm(n_exp, generator=gen)[:k] for _ in range(t)])
    if t == 33:
        idx[:, 0] = 0  # one expert's run spans three blocks
    pairs, blk_e, blk_start, blk_rows = (a.cpu() for a in moe_w4.align(idx.to(DEV), n_exp, bm))
    flat = idx.reshape(-1)
    assert torch.equal(pairs.long(), torch.sort(flat, stable=True).indices)
    assert blk_e.numel() == moe_w4.max_blocks(t * k, n_exp, bm)
    seen = []
    for b in range(blk_e.numel()):
        rows = int(blk_rows[b])
        assert 0 <= rows <= bm
        if rows:
            got = pairs[blk_start[b]: blk_start[b] + rows].long()
            assert (flat[got] == blk_e[b]).all()
            seen += got.tolist()
    assert sorted(seen) == list(range(t * k))  # every pair in exactly one block


# -- Qwen3-30B-A3B on the device -------------------------------------------------------------------

QWEN3_30B = dict(n_exp=128, hidden=2048, inter=768, k=8, group=128)


@pytest.mark.gpu
@pytest.mark.skipif(DEV != "cuda", reason="needs CUDA")
@pytest.mark.parametrize("t", [1, 64])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("path", list(moe_w4.MoEPath))
def test_gpu_qwen3_30b_shapes(t, sym, path):
    """Qwen3-30B-A3B's expert shapes, the device packer's bytes, against the float64 contract, on
    both grouped paths (the CUDA decode and the Triton kernels)."""
    c = QWEN3_30B
    gen = torch.Generator(device="cuda").manual_seed(t)
    fmt, _, experts, (gate, up, down) = make_experts(
        c["n_exp"], c["hidden"], c["inter"], "w4_t64x64", gen, pack=lambda q, s: reference.pack_w4(q, 64),
        group_size=c["group"], sym=sym)
    x = torch.randn(t, c["hidden"], device="cuda", generator=gen).bfloat16()
    idx = torch.stack([torch.randperm(c["n_exp"], device="cuda", generator=gen)[: c["k"]] for _ in range(t)])
    weights = torch.softmax(torch.randn(t, c["k"], device="cuda", generator=gen), -1)

    def contract(xe, which, e):
        qs, _, _ = experts[which]
        return reference.ref_linear(xe, "w4a16", qs[e]).to(xe.dtype)

    y = moe_w4.grouped_moe(x, weights, idx, gate, up, down, path=path)
    err = reference.rel_err(y, loop_reference(x, weights, idx, contract))
    assert err < TOL, f"rel err {err:.2e}"


# -- end to end: a tiny MoE model quantized w4a16, packed at load, grouped path vs the loop ----------

@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral"])
def test_tiny_model_grouped_path_matches_the_loop(tmp_path, arch):
    """Loaded with the CUDA backend (the interpreter here) the MoE blocks take the grouped path,
    their experts' buffers are slices of the stack; the logits equal the per-expert loop's."""
    pytest.importorskip("transformers")
    from tinymodels import make_tiny_model

    from turbopack.inference.loader import load
    from turbopack.inference.moe import MoE
    from turbopack.packer.quantize import quantize

    src = make_tiny_model(tmp_path / arch, arch=arch, num_hidden_layers=1, intermediate_size=64)
    quantize(src, tmp_path / "q", "w4a16", progress=False, group_size=64, sym=False)
    model = load(tmp_path / "q", device=DEV, arch="sm90", backend="cuda").model
    moes = [m for m in model.modules() if isinstance(m, MoE)]
    assert moes and all(m.grouped is not None for m in moes)
    stack = moes[0].grouped.down.qweight
    assert moes[0].experts[1].get_submodule(moes[0].experts[1].names[2]).qweight.data_ptr() == stack[1].data_ptr()
    ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(0)).to(DEV)
    with torch.no_grad():
        grouped = model(ids).float()
        for m in moes:
            m.grouped = None
        looped = model(ids).float()
    err = reference.rel_err(grouped, looped)
    assert err < tol(torch.bfloat16), f"rel err {err:.2e}"
