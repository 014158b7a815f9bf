"""moe_grouped.dense_as_one_expert: a dense SwiGLU MLP run by the grouped MoE decode as its one
expert. Without CUDA the grouped Triton kernels run in the interpreter against the layouts' CPU
emulator of the dense linears; the ``gpu`` test runs fastpath.mlp on the device at the 8B shape,
grouped against dense."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from turbopack.formats import get_format  # noqa: E402
from turbopack.inference.kernels import epilogue  # noqa: E402
from turbopack.inference.moe_grouped import dense_as_one_expert  # noqa: E402
from turbopack.inference.qlinear import Backend, QuantLinear, concat  # noqa: E402
from turbopack.layouts import emulate_linear, get_layout  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
if DEV == "cpu" and not epilogue.interpreting():
    pytest.skip("TRITON_INTERPRET=1 was not in effect when the kernels were imported", allow_module_level=True)


def _linear(fmt, layout, shape, gen, bias=False):
    q = fmt.quantize(torch.randn(shape, generator=gen) * 0.05)
    packed = {k: v.to(DEV) for k, v in layout.pack(fmt, q, shape).items()}
    b = torch.randn(shape[0], generator=gen).to(DEV) if bias else None
    return QuantLinear.from_tensors(fmt, shape, packed, layout=layout, backend=Backend.CUDA, bias=b)


def _mlp(hidden, inter, layout_name="w4_t64x64", seed=0, **params):
    gen = torch.Generator().manual_seed(seed)
    fmt, layout = get_format("w4a16", **params), get_layout(layout_name)
    gate, up, down = (_linear(fmt, layout, s, gen) for s in ((inter, hidden), (inter, hidden), (hidden, inter)))
    return fmt, layout, gate, up, down


@pytest.mark.parametrize("layout_name,params", [("w4_t64x64", {}), ("w4_t16x64", {"sym": True, "group_size": 64})])
def test_gate_and_up_are_the_halves_of_gate_up_and_compute_the_mlp(layout_name, params):
    hidden, inter = 128, 128
    fmt, layout, gate, up, down = _mlp(hidden, inter, layout_name, **params)
    gate_up = concat([gate, up])
    one = dense_as_one_expert(gate_up, down)
    assert one is not None and one.act == "silu"
    for stack, lin in ((one.gate, gate), (one.up, up), (one.down, down)):
        assert stack.shape == lin.shape and stack.group == fmt.group_size
        assert torch.equal(stack.qweight[0], lin.qweight) and torch.equal(stack.scales[0], lin.scales)
        assert (stack.zeros is None) == params.get("sym", False)
        assert stack.zeros is None or torch.equal(stack.zeros[0], lin.zeros)
    assert one.gate.qweight.data_ptr() == gate_up.qweight.data_ptr()  # views, not copies
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, hidden, generator=gen).to(torch.float16)
    y = one(x.to(DEV), torch.ones(3, 1, device=DEV), torch.zeros(3, 1, dtype=torch.int32, device=DEV)).cpu()

    def emu(v, lin):
        return emulate_linear(v, fmt, layout, {k: t.cpu() for k, t in lin.tensors().items()}, lin.shape)

    h = (F.silu(emu(x, gate).float()).to(x.dtype).float() * emu(x, up).float()).to(x.dtype)
    want = emu(h, down)
    assert y.dtype == x.dtype
    assert ((y.float() - want.float()).norm() / want.float().norm()).item() < 1e-2


def test_refused_where_the_grouped_kernels_do_not_apply():
    fmt, layout, gate, up, down = _mlp(128, 96, group_size=32)  # 96 rows: gate's rows end inside a 64-row tile
    assert dense_as_one_expert(concat([gate, up]), down) is None
    fmt, layout, gate, up, down = _mlp(128, 128)
    gen = torch.Generator().manual_seed(2)
    assert dense_as_one_expert(concat([gate, up]), _linear(fmt, layout, (128, 128), gen, bias=True)) is None
    assert dense_as_one_expert(concat([gate, up]), concat([gate, up])) is None  # down's shape is not (hidden, inter)
    assert dense_as_one_expert(concat([gate, up]), torch.nn.Linear(128, 128)) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("tokens", [1, 8])
def test_fastpath_mlp_grouped_matches_dense_on_gpu(tokens, monkeypatch):
    """The 8B MLP (hidden 4096, intermediate 14336) through the grouped decode against the dense
    kernels (gate|up, SiLU-mul, down), eager and replayed from a CUDA graph."""
    from types import SimpleNamespace

    from turbopack.inference import fastpath

    _, _, gate, up, down = _mlp(4096, 14336)
    block = SimpleNamespace(gate_up_proj=concat([gate, up]), down_proj=down)
    h = torch.randn(tokens, 1, 4096, device="cuda", dtype=torch.bfloat16)
    dense = fastpath.mlp(block, h)
    monkeypatch.setattr(fastpath, "GROUPED_MLP_MAX_TOKENS", 16)
    grouped = fastpath.mlp(block, h)
    assert grouped.shape == dense.shape and grouped.dtype == dense.dtype
    assert ((grouped.float() - dense.float()).norm() / dense.float().norm()).item() < 1e-2
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        replayed = fastpath.mlp(block, h)
    graph.replay()
    torch.cuda.synchronize()
    # split-K sums in fp32 atomics where the config splits K (8 tokens here): same values, not same bits
    assert ((replayed.float() - grouped.float()).norm() / grouped.float().norm()).item() < 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("tokens,activation", [(1, "silu"), (8, "silu"), (16, "silu"), (1, "gelu_pytorch_tanh")])
def test_fastpath_mlp_glu_matches_three_launches_on_gpu(tokens, activation, monkeypatch):
    """The 8B MLP (hidden 4096, intermediate 14336) as fastpath runs it by default, gate|up's decode
    applying the activation in its store (QuantLinear.glu) where the shipped table's GLU_WARPS says
    so (not at M = 16: 0 there, the two launches won), against gate|up, act_mul, down (GLU_DECODE
    off), eager and replayed from a CUDA graph. Through dispatch.glu's config: GLU_WARPS 0 gives
    None (the caller's three launches), GLU_WARPS set runs the GLU whatever variant the entry names
    for the plain linear (v7 here); past 16 tokens or with a bias, None."""
    from types import SimpleNamespace

    from turbopack.inference import fastpath
    from turbopack.inference.config import Activation
    from turbopack.inference.kernels import dispatch
    from turbopack.inference.kernels.config import KernelConfig, KernelName

    act = Activation(activation)
    _, _, gate, up, down = _mlp(4096, 14336)
    fused = concat([gate, up])
    block = SimpleNamespace(gate_up_proj=fused, down_proj=down)
    h = torch.randn(tokens, 1, 4096, device="cuda", dtype=torch.bfloat16)

    def with_config(**knobs):
        cfg = KernelConfig(KernelName.CUDA, **knobs)
        return dispatch.glu(h, fused.fmt, fused.layout, fused.tensors(), fused.shape, act, config=cfg)

    assert (fused.glu(h, act) is None) == (tokens == 16)
    glu = fastpath.mlp(block, h, act)
    monkeypatch.setattr(fastpath, "GLU_DECODE", False)
    three = fastpath.mlp(block, h, act)
    assert glu.shape == three.shape and glu.dtype == three.dtype
    assert ((glu.float() - three.float()).norm() / three.float().norm()).item() < 5e-3
    monkeypatch.setattr(fastpath, "GLU_DECODE", True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        replayed = fastpath.mlp(block, h, act)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(replayed, glu)
    assert with_config(glu_warps=0) is None
    by_rows = with_config(split_k=8, variant=6, glu_warps=16 if tokens <= 8 else 8)
    two = dispatch.linear(h, fused.fmt, fused.layout, fused.tensors(), fused.shape)
    from turbopack.inference.kernels.glue import act_mul

    want = act_mul(two, act).float()
    assert ((by_rows.float() - want).norm() / want.norm()).item() < 2e-3
    v7 = with_config(split_k=1, variant=2, glu_warps=16 if tokens <= 8 else 8)
    assert torch.equal(v7, by_rows)
    assert fused.glu(torch.randn(17, 4096, device="cuda", dtype=torch.bfloat16), act) is None  # past M = 16
    biased = _linear(get_format("w4a16"), get_layout("w4_t64x64"), (2 * 1024, 4096), torch.Generator().manual_seed(3),
                     bias=True)
    assert biased.glu(h, act) is None
