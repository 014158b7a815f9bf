"""fastpath.forward, the runtime's fused decode path, against Transformer.forward, family by family:
prefill then decode steps, every KV cache the runtime offers. Without CUDA the Triton kernels run
in the CPU interpreter; the tests marked gpu run in the device's -m gpu suite on the compiled
kernels too."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from turbopack.inference import fastpath  # noqa: E402
from turbopack.inference import kv_quant as KQ  # noqa: E402
from turbopack.inference.api import fuse_model  # noqa: E402
from turbopack.inference.config import Activation, ModelConfig, NormStyle  # noqa: E402
from turbopack.inference.generate import Engine  # noqa: E402
from turbopack.inference.kernels import glue  # noqa: E402
from turbopack.inference.model import build_model  # noqa: E402
from turbopack.inference.moe_config import MoEConfig  # noqa: E402
from turbopack.inference.rope import RopeScaling, RopeType  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEV.type == "cpu" and type(glue._add_rmsnorm_kernel).__name__ != "InterpretedFunction":
    pytest.skip("TRITON_INTERPRET=1 was not in effect when the kernels were imported", allow_module_level=True)

BASE = ModelConfig(vocab=64, hidden=64, intermediate=96, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32,
                   max_position_embeddings=64)


def _longrope(rotary: int) -> RopeScaling:
    """LongRoPE past a training length of 5: a prefill within it decoded across it turns by the
    short factors, then the long ones; a prefill past it turns wholly with the long factors."""
    half = rotary // 2
    return RopeScaling(RopeType.LONGROPE, 12.8, original_max_position_embeddings=5, attention_factor=1.2,
                       short_factor=tuple(1 + i / 4 for i in range(half)),
                       long_factor=tuple(1.0 + 2 * i for i in range(half)))


_GEMMA = dict(norm=NormStyle.GEMMA, activation=Activation.GELU_TANH, sandwich_norms=True, embed_scale=8.0,
              attn_scale=0.2, layer_windows=(3, None))  # a window of 3: seven tokens reach past it
_MOE = MoEConfig("mlp", ("gate_proj", "up_proj", "down_proj"), n_experts=4, top_k=2, intermediate=32,
                 normalise=True, round_weights=True, shared_intermediate=None, sparse_layers=(True, False))
#: family -> its differences from Llama in a tiny config
FAMILIES = {
    "llama": dict(attention_bias=True, o_proj_bias=True),
    "phi3": dict(fused_projections=True),
    "phi3_longrope": dict(fused_projections=True, rope_scaling=_longrope(32)),
    "phi4_mini": dict(fused_projections=True, rotary_dim=16, rope_scaling=_longrope(16)),  # partial rotary
    "qwen3": dict(qk_norm=True),
    "gemma2": dict(_GEMMA, attn_softcap=5.0, final_softcap=3.0),
    "gemma3": dict(_GEMMA, qk_norm=True, local_rope_theta=10.0),
    "qwen3_moe": dict(qk_norm=True, moe=_MOE),  # layer 0 experts, layer 1 dense
    "qwen2_moe": dict(attention_bias=True, moe=replace(_MOE, normalise=False, shared_intermediate=48,
                                                       sparse_layers=(True, True))),
}
#: (precision, backend): the Triton caches, and the plain torch cache, as for a head_dim the
#: Triton attention cannot read (its decode steps take the mask path)
CACHES = {"bf16": ("bf16", "triton"), "int8": ("int8", "triton"), "int4": ("int4", "triton"),
          "torch": ("bf16", "torch")}


def _model(family: str, fuse: bool = True, **change):
    """The family's tiny model (``change``: config fields replaced), random weights by name."""
    model = build_model(replace(BASE, **{**FAMILIES[family], **change}), device=DEV, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            g = torch.Generator().manual_seed(sum(map(ord, name)))  # the same tensors whatever else changed
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if name.endswith("norm.weight") else 0.0))
    if fuse:
        fuse_model(model)
    return model


def _steps(forward, model, cache: str, ids: torch.Tensor, pre: int) -> torch.Tensor:
    """The last logits of a prefill of ``pre`` tokens, then of each one-token decode step."""
    model.setup_caches(ids.shape[0], 64, cache_cls=KQ.cache_factory(*CACHES[cache]))
    steps = [forward(ids[:, :pre], torch.arange(pre, device=DEV))[:, -1]]
    for i in range(pre, ids.shape[1]):
        steps.append(forward(ids[:, i:i + 1], torch.tensor([i], device=DEV))[:, -1])
    return torch.stack(steps, 1)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.gpu  # also in the device's -m gpu suite: there on the compiled kernels, here interpreted
@pytest.mark.parametrize("family,cache,pre", [  # every cache once on Llama; each family on a Triton cache and
    # the torch one, and the int4 store where its rotary or attention differs (the kernels' own
    # tests in test_kv_quant.py sweep precisions against those differences)
    *(("llama", c, 5) for c in CACHES),
    *((f, c, 5) for f in ("phi3", "qwen3", "gemma3", "qwen2_moe") for c in ("bf16", "torch")),
    *(("phi3_longrope", c, p) for c, p in (("bf16", 5), ("bf16", 6), ("torch", 6))),
    *((f, c, 5) for f in ("phi4_mini", "gemma2") for c in ("bf16", "int4", "torch")),
    ("phi4_mini", "bf16", 6), ("qwen3_moe", "int8", 5),
])
def test_fastpath_forward_matches_reference_forward(family, cache, pre):
    """Prefill then decode through fastpath.forward == Transformer.forward (fp32): each family's
    norms, activation, scale, soft-caps, sliding window, q/k norms, rotary (partial, LongRoPE,
    Gemma 3's local tables) and experts, on every KV cache."""
    model = _model(family)
    assert fastpath.supported(model)
    ids = torch.randint(0, 64, (2, 7), device=DEV, generator=torch.Generator(device=DEV).manual_seed(7))
    want = _steps(model, model, cache, ids, pre)
    got = _steps(lambda i, p: fastpath.forward(model, i, p), model, cache, ids, pre)
    # a quantized cache's codes are bit-exact for equal inputs, but rotary's fused multiply-adds may
    # move a K element across a rounding boundary: one code off by one, ~1e-4 of these logits
    # fp32 caches: the order of fp32 sums alone, and on the GPU the compiled kernels' approximate
    # exp2/rsqrt (a few ulp each): 1.1-1.7e-5 on the H200 (run 11) for q/k norms and LongRoPE
    tol = (5e-5 if DEV.type == "cuda" else 1e-5) if CACHES[cache][0] == "bf16" else 1e-3
    assert _rel_err(got, want) < tol, (family, cache, pre)


@pytest.mark.parametrize("family,change", [
    ("gemma2", dict(attn_softcap=None)), ("gemma2", dict(final_softcap=None)), ("gemma2", dict(layer_windows=None)),
    ("gemma2", dict(norm=NormStyle.LLAMA)), ("gemma2", dict(activation=Activation.SILU)),
    ("gemma2", dict(sandwich_norms=False)), ("gemma3", dict(local_rope_theta=None)),
    ("phi4_mini", dict(rotary_dim=None, rope_scaling=None)),
])
def test_each_difference_moves_the_logits(family, change):
    """Each family difference the fast path reproduces changes this tiny model's decode logits:
    the check above would catch a kernel that ignored it."""
    model, other = _model(family, fuse=False), _model(family, fuse=False, **change)
    ids = torch.randint(0, 64, (1, 7), device=DEV, generator=torch.Generator(device=DEV).manual_seed(8))
    a = _steps(model, model, "torch", ids, 5)
    b = _steps(other, other, "torch", ids, 5)
    assert _rel_err(b, a) > 1e-3, (family, change)


def test_unfused_models_take_the_reference_forward():
    """Without fused projections (fuse_model not run: the CPU runtime's default) forward() is not
    offered; every family is, fused."""
    for family in FAMILIES:
        model = _model(family, fuse=False)
        assert fastpath.supported(model) == bool(FAMILIES[family].get("fused_projections")), family
        fuse_model(model)
        assert fastpath.supported(model), family


@pytest.mark.gpu
@pytest.mark.skipif(DEV.type != "cuda", reason="CUDA graphs need CUDA")
@pytest.mark.parametrize("family", [f for f in FAMILIES if "moe" not in FAMILIES[f]])
def test_captured_decode_matches_eager(family):
    """Each dense family's fast-path step captures into a CUDA graph (nothing in it may touch the
    host: Gemma's embedding scale once built a device tensor per step, which capture refuses) and
    its replays decode the eager steps' tokens."""
    model = _model(family)
    ids = torch.randint(0, 64, (2, 5), device=DEV, generator=torch.Generator(device=DEV).manual_seed(9))
    eager, _ = Engine(model, use_graphs=False).generate(ids, 8)
    graph, stats = Engine(model).generate(ids, 8)
    assert stats.cuda_graph and torch.equal(graph, eager), family


def test_mlp_without_a_glu_kernel_is_gate_up_act_mul_down():
    """Off the GPU (and for any backend but the CUDA one) QuantLinear.glu and dispatch.glu give None,
    so fastpath.mlp runs gate|up, act_mul, down: here on the layouts' CPU emulator, the same
    numbers as those three calls made by hand, for both activations."""
    from types import SimpleNamespace

    from turbopack.formats import get_format
    from turbopack.inference.kernels import dispatch
    from turbopack.inference.qlinear import QuantLinear, concat
    from turbopack.layouts import get_layout

    fmt, layout = get_format("w4a16", group_size=64), get_layout("w4_t64x64")
    gen = torch.Generator().manual_seed(2)

    def linear(shape):
        q = fmt.quantize(torch.randn(shape, generator=gen) * 0.05)
        return QuantLinear.from_tensors(fmt, shape, layout.pack(fmt, q, shape), layout=layout, backend="emulator")

    gate_up = concat([linear((128, 64)), linear((128, 64))])
    block = SimpleNamespace(gate_up_proj=gate_up, down_proj=linear((64, 128)))
    h = torch.randn(3, 1, 64, generator=gen, dtype=torch.bfloat16)
    assert gate_up.glu(h, Activation.SILU) is None
    assert dispatch.glu(h, fmt, layout, gate_up.tensors(), gate_up.shape, Activation.SILU) is None
    for act in Activation:
        want = block.down_proj(glue.act_mul(gate_up(h), act))
        assert torch.equal(fastpath.mlp(block, h, act), want), act
