"""The CUDA C++ grouped MoE decode (csrc/moe_w4.cu, cuda_moe): it compiles for sm_90a without
spills (CPU, this machine's nvcc), its K-split rule leaves no CTA without work, the dispatch keeps
the Triton kernels where it cannot run; on a GPU it matches the per-expert loop of the layouts'
CPU emulator on fresh random inputs within 1e-2 relative (the loop's roundings: each linear's
output, silu and the product to 16 bits; the kernel's weights are exact fp32 (q - z) * s where the
emulator rounds them to 16 bits, ~1e-3), over awkward routings (an expert with no token, every
token on the same expert(s): runs of 33 or 64 pairs, several 8- or 16-row blocks, T = 1, T = 64), both layouts, groups
64/128, sym/asym, bf16/fp16, int32/int64 ids, 16-bit/fp32 routing weights, split K in both
kernels and both ring depths, the few-token kernels (gate_up by pair, down by token, alone and
together, with idle warps where the K range is short, top-1/2/4/8); it is deterministic where its splits are
(a re-run is bit-identical),
with or without down as a programmatic dependent launch of gate_up, replays from a CUDA graph
and leaves the shared workspace zeroed.
"""

from __future__ import annotations

import dataclasses
import subprocess
import unittest.mock as mock

import pytest
import torch
from test_moe_w4 import ROUTINGS, emulated, loop_reference, make_experts

from turbopack.inference.kernels import cuda_build, cuda_moe, cuda_w4, moe_w4, reference
from turbopack.inference.kernels.epilogue import workspace

NVCC = cuda_build.nvcc()
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
TOL = 1e-2


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
def test_grouped_decode_compiles_for_sm90a_without_spills(tmp_path):
    # one target: --split-compile spreads ptxas over the kernels, onto CI's second core
    cmd = [NVCC, "-c", "-O3", "-std=c++17", "--split-compile", "0", "-Xptxas", "-v", cuda_w4.gencode((9, 0)),
           str(cuda_moe.SRC), "-o", str(tmp_path / "k.o")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    entries = [ln for ln in res.stderr.splitlines() if "Compiling entry" in ln]
    # dtype x G x ASYM x 2 ring depths x (gate_up: 2 NTOK x (sums of x, x per stage) + by pair; down: the
    # same + by token in 8, 16 or 32 warps, and in 16 reading h per stage), + the combine kernel per dtype
    assert len(entries) == 2 * 2 * 2 * 2 * (5 + 8) + 2
    spills = [ln for ln in res.stderr.splitlines() if "spill" in ln and not ln.strip().startswith("0 bytes stack")]
    assert spills == [], spills[:3]


@pytest.mark.parametrize("stages", [1, 2, 6, 16, 112])
def test_split_rule_leaves_no_cta_without_stages(stages):
    for ctas in (1, 8, 96, 256, 1536, 4096):
        for sms in (1, 78, 132):
            split = cuda_moe._split(ctas, stages, sms, 2)
            per = -(-stages // split)
            assert 1 <= split <= max(1, stages // 2) and (split - 1) * per < stages, (ctas, sms, split)
    assert cuda_moe._split(96, 16, 132, 2) == 4  # Qwen3-30B-A3B gate_up at T = 1: 8 experts x 12 tiles


def test_cpu_and_interpreter_stay_on_triton():
    """Off the GPU (here: the interpreter) the CUDA path never claims a step."""
    gen = torch.Generator().manual_seed(0)
    _, _, _, stacks = make_experts(4, 128, 128, "w4_t64x64", gen, group_size=64, sym=False)
    x = torch.randn(1, 128, generator=gen).bfloat16()
    idx, w = torch.tensor([[0, 1]]), torch.tensor([[0.5, 0.5]])
    assert not cuda_moe.supports(x, w, idx, *stacks)


def test_ring_rule():
    """Qwen3-30B-A3B at T = 1: gate_up 4 slots per CTA -> 6 (all in flight), down 3 -> 4; T = 64:
    16 and 6 stages -> 4 (the dense depth) and 8."""
    assert cuda_moe.ring(4, cuda_moe.STAGES_GATE_UP) == 6 and cuda_moe.ring(3, cuda_moe.STAGES_DOWN) == 4
    assert cuda_moe.ring(16, cuda_moe.STAGES_GATE_UP) == 4 and cuda_moe.ring(6, cuda_moe.STAGES_DOWN) == 8


def test_few_token_rule():
    """Qwen3-30B-A3B at T = 1 and 2: gate_up by pair, 2 stages a warp -> ring 4; down by token in
    16 warps reading h per stage, 3 stages a warp (k = 8: two warps a pair) -> ring 4, but 8 at T = 1
    (128 CTAs: one per SM). T = 3 or top-3 (not dividing 8): the routed kernels."""
    dev = torch.device("cuda")
    with mock.patch.object(torch.cuda, "get_device_properties", return_value=mock.Mock(multi_processor_count=132)):
        for t, ring_d in ((1, 8), (2, 4)):
            cfg = cuda_moe.default_config(t, 8, 128, 2048, 768, dev)
            assert (cfg.gate_up_by_pair, cfg.down_by_token, cfg.down_warps, cfg.stages_gate_up, cfg.stages_down,
                    cfg.block_m, cfg.x_per_stage) == (True, True, 16, 4, ring_d, 8, True), cfg
        routed = cuda_moe.default_config(3, 8, 128, 2048, 768, dev)
        assert not routed.down_by_token and routed.x_per_stage and not routed.combine  # 24 x 32 down CTAs
        t64 = cuda_moe.default_config(64, 8, 128, 2048, 768, dev)  # 192 block slots x 32 tiles: many waves
        assert (t64.split_down, t64.stages_down, t64.x_per_stage, t64.combine) == (1, 4, True, True), t64
        assert not cuda_moe.default_config(1, 3, 128, 2048, 768, dev).gate_up_by_pair
        assert cuda_moe.default_config(1, 2, 8, 4096, 14336, dev).down_by_token  # Mixtral: 4 warps a pair


def test_config_checks_name_the_fix():
    """Knob combinations the kernels do not build fail before any launch (so also here, on the CPU)."""
    gen = torch.Generator().manual_seed(0)
    _, _, _, stacks = make_experts(4, 128, 128, "w4_t64x64", gen, group_size=64, sym=False)
    x = torch.randn(1, 128, generator=gen).bfloat16()
    idx3, w3 = torch.tensor([[0, 1, 2]]), torch.full((1, 3), 1 / 3)
    with pytest.raises(ValueError, match="top-k must divide it"):
        cuda_moe.grouped_moe_cuda(x, w3, idx3, *stacks, cfg=cuda_moe.MoECudaConfig(down_by_token=True))
    with pytest.raises(ValueError, match="down_warps is one of"):
        cuda_moe.grouped_moe_cuda(x, w3[:, :2], idx3[:, :2], *stacks,
                                  cfg=cuda_moe.MoECudaConfig(down_by_token=True, down_warps=12))
    with pytest.raises(ValueError, match="stages_down 4 at 32 warps"):  # 282 KiB of shared memory
        cuda_moe.grouped_moe_cuda(x, w3[:, :2], idx3[:, :2], *stacks,
                                  cfg=cuda_moe.MoECudaConfig(down_by_token=True, down_warps=32, stages_down=8))
    with pytest.raises(ValueError, match="pdl_gate_up needs gate_up_by_pair"):
        cuda_moe.grouped_moe_cuda(x, w3, idx3, *stacks, cfg=cuda_moe.MoECudaConfig(pdl_gate_up=True))
    with pytest.raises(ValueError, match="down_by_token in 16 warps only"):  # the routed kernels: any
        cuda_moe.grouped_moe_cuda(x, w3[:, :2], idx3[:, :2], *stacks, cfg=cuda_moe.MoECudaConfig(
            down_by_token=True, down_warps=8, x_per_stage=True))
    with pytest.raises(ValueError, match="combine is built for the routed down at split_down 1"):
        cuda_moe.grouped_moe_cuda(x, w3, idx3, *stacks, cfg=cuda_moe.MoECudaConfig(split_down=2, combine=True))
    with pytest.raises(ValueError, match="block_m 12"):
        cuda_moe.grouped_moe_cuda(x, w3, idx3, *stacks, cfg=cuda_moe.MoECudaConfig(block_m=12))


def test_block_rows_rule():
    assert cuda_moe.block_rows(1, 8, 128) == 8 and cuda_moe.block_rows(64, 8, 128) == 8  # Qwen3-30B decode
    assert cuda_moe.block_rows(64, 2, 8) == 16 and cuda_moe.block_rows(33, 2, 5) == 16


# -- on the GPU ------------------------------------------------------------------------------------

CASES = [  # (layout, E, hidden, inter, T, k, group, sym, act, routing, MoECudaConfig fields)
    ("w4_t64x64", 6, 256, 128, 1, 2, 128, False, torch.bfloat16, "random", (1, 1, 4, 8)),
    ("w4_t64x64", 6, 256, 256, 1, 4, 64, True, torch.float16, "random", (2, 2, 6, 4)),
    ("w4_t16x64", 6, 256, 128, 7, 3, 128, True, torch.bfloat16, "skip_expert_2", (1, 1, 4, 4)),
    ("w4_t64x64", 5, 384, 256, 33, 2, 128, False, torch.bfloat16, "one_expert", (3, 2, 4, 8)),
    ("w4_t16x64", 6, 256, 128, 19, 2, 64, False, torch.float16, "random", (1, 1, 6, 8)),
    ("w4_t64x64", 6, 256, 128, 19, 2, 64, False, torch.bfloat16, "one_expert", (2, 2, 4, 8, True, 8)),  # 3 blocks of 8
    ("w4_t64x64", 16, 256, 128, 5, 4, 128, True, torch.float16, "random", (1, 1, 4, 4, True, 16)),
    ("w4_t64x64", 16, 512, 384, 64, 4, 128, False, torch.bfloat16, "random", (1, 1, 4, 8)),
    ("w4_t64x64", 16, 256, 256, 64, 4, 64, True, torch.bfloat16, "one_expert", (2, 1, 4, 4)),
    ("w4_t64x64", 8, 256, 128, 16, 2, 128, False, torch.float16, "skip_expert_2", (1, 1, 4, 8)),
    ("w4_t64x64", 6, 256, 256, 2, 2, 128, True, torch.bfloat16, "random", (2, 1, 4, 4, False)),  # no PDL
    ("w4_t64x64", 4, 256, 128, 33, 1, 128, False, torch.bfloat16, "one_expert", (1, 2, 4, 8, True, 8)),  # 5 blocks
    ("w4_t16x64", 4, 256, 256, 64, 1, 64, True, torch.float16, "one_expert", (2, 1, 6, 4)),  # 4 blocks of 16
    # the few-token kernels (gate_up by pair, down by token), alone and together; warps with no
    # stages where K is short (256: 2 stages over 8 warps; down at k = 2: 1 stage over 4)
    ("w4_t64x64", 6, 256, 128, 1, 2, 128, False, torch.bfloat16, "random", (1, 1, 4, 8, True, 8, True, True)),
    ("w4_t16x64", 6, 256, 256, 2, 4, 64, True, torch.float16, "one_expert", (2, 1, 6, 4, True, 8, True, True)),
    ("w4_t64x64", 16, 512, 384, 3, 8, 128, False, torch.bfloat16, "random", (1, 1, 6, 8, False, 8, True, True, 16)),
    ("w4_t64x64", 8, 384, 384, 2, 1, 64, True, torch.bfloat16, "random", (1, 1, 4, 4, True, 8, False, True)),  # k=1
    ("w4_t64x64", 6, 384, 256, 7, 3, 64, True, torch.bfloat16, "skip_expert_2", (1, 2, 4, 8, True, 8, True, False)),
    ("w4_t16x64", 16, 2048, 128, 1, 8, 128, True, torch.float16, "random", (3, 1, 4, 8, True, 16, True, True)),
    ("w4_t64x64", 16, 256, 768, 2, 4, 64, False, torch.bfloat16, "random", (1, 1, 4, 4, True, 8, True, True, 16)),
    ("w4_t64x64", 16, 512, 384, 1, 8, 128, True, torch.float16, "random", (1, 1, 4, 8, True, 8, True, True, 16, True)),
    ("w4_t64x64", 16, 256, 768, 1, 8, 128, False, torch.bfloat16, "random", (1, 1, 4, 4, True, 8, True, True, 32)),
    ("w4_t16x64", 8, 256, 384, 2, 2, 64, True, torch.float16, "random", (1, 1, 4, 4, True, 8, False, True, 32)),
    # down by token reading h per stage (x_per_stage, 16 warps), after gate_up by pair and routed: each
    # group, symmetry and ring, top-k 1, 2 and 8, a routing that skips an expert
    ("w4_t64x64", 6, 256, 128, 1, 2, 128, False, torch.bfloat16, "random",
     (1, 1, 4, 8, True, 8, True, True, 16, False, True)),
    ("w4_t16x64", 6, 256, 256, 2, 4, 64, True, torch.float16, "one_expert",
     (2, 1, 6, 4, True, 8, True, True, 16, False, True)),
    ("w4_t64x64", 16, 512, 384, 1, 8, 128, True, torch.float16, "random",
     (1, 1, 4, 8, True, 8, True, True, 16, True, True)),
    ("w4_t64x64", 16, 256, 768, 2, 8, 64, False, torch.bfloat16, "random",
     (1, 1, 6, 4, True, 8, False, True, 16, False, True)),
    ("w4_t64x64", 8, 384, 384, 2, 1, 64, True, torch.bfloat16, "skip_expert_2",
     (1, 1, 4, 4, True, 8, False, True, 16, False, True)),
    # the routed gate_up and down reading x / h per stage (x_per_stage): one and two token columns,
    # K splits, each group, symmetry and ring, several blocks of one expert, a skipped expert
    ("w4_t64x64", 16, 512, 384, 64, 4, 128, False, torch.bfloat16, "random",
     (1, 1, 4, 8, True, 8, False, False, 8, False, True)),
    # down's sum over top-k in a launch of its own (combine; split_down 1), with and without x per stage
    ("w4_t64x64", 16, 512, 384, 64, 4, 128, False, torch.bfloat16, "random",
     (1, 1, 4, 8, True, 8, False, False, 8, False, True, True)),
    ("w4_t16x64", 6, 256, 256, 19, 2, 64, True, torch.float16, "skip_expert_2",
     (2, 1, 6, 4, False, 16, False, False, 8, False, False, True)),
    ("w4_t64x64", 8, 384, 256, 33, 2, 128, True, torch.bfloat16, "one_expert",
     (1, 1, 4, 8, True, 8, False, False, 8, False, True, True)),
    ("w4_t16x64", 6, 256, 128, 7, 3, 64, True, torch.float16, "skip_expert_2",
     (2, 2, 6, 4, True, 16, False, False, 8, False, True)),
    ("w4_t64x64", 5, 384, 256, 33, 2, 64, True, torch.bfloat16, "one_expert",
     (3, 2, 4, 8, False, 16, False, False, 8, False, True)),
    ("w4_t64x64", 8, 256, 256, 19, 2, 128, False, torch.float16, "one_expert",
     (1, 1, 6, 4, True, 8, False, False, 8, False, True)),
]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("layout_name,n_exp,hidden,inter,t,k,group,sym,act,routing,cfg", CASES)
def test_cuda_grouped_matches_the_emulated_loop(layout_name, n_exp, hidden, inter, t, k, group, sym, act, routing, cfg):
    gen = torch.Generator().manual_seed(t * 7 + hidden + group)
    fmt, layout, experts, stacks = make_experts(n_exp, hidden, inter, layout_name, gen, group_size=group, sym=sym,
                                                scale_dtype=str(act).removeprefix("torch."))
    x = torch.randn(t, hidden, generator=gen).to(act)
    idx = ROUTINGS[routing](t, k, n_exp, gen)
    weights = torch.softmax(torch.randn(t, k, generator=gen), -1)
    want = loop_reference(x, weights, idx, emulated(fmt, layout, experts))
    xd = x.cuda()
    for ids, wts in ((idx, weights), (idx.int(), weights.to(act))):  # int64 / int32 ids, fp32 / 16-bit weights
        assert cuda_moe.supports(xd, wts.cuda(), ids.cuda(), *stacks)
        y = cuda_moe.grouped_moe_cuda(xd, wts.cuda(), ids.cuda(), *stacks, cfg=cuda_moe.MoECudaConfig(*cfg)).cpu()
        assert y.dtype == act and y.shape == x.shape
        w_ref = want if wts.dtype == torch.float32 else loop_reference(x, wts, idx, emulated(fmt, layout, experts))
        err = reference.rel_err(y, w_ref)
        assert err < TOL, f"{ids.dtype} ids, {wts.dtype} weights: rel err {err:.2e}"
    assert moe_w4.grouped_moe(xd, weights.cuda(), idx.cuda(), *stacks).shape == x.shape  # the dispatch takes it


def _qwen3_30b_step(t, seed):
    """A step at Qwen3-30B-A3B's expert shapes (128 experts, 2048 / 768, top-8, g128 asym) packed by
    the device packer: x, ids, routing weights, the stacks and the float64 contract's y."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    _, _, experts, stacks = make_experts(128, 2048, 768, "w4_t64x64", gen,
                                           pack=lambda q, s: reference.pack_w4(q, 64), group_size=128, sym=False)
    x = torch.randn(t, 2048, device="cuda", generator=gen).bfloat16()
    idx = torch.stack([torch.randperm(128, device="cuda", generator=gen)[:8] for _ in range(t)])
    weights = torch.softmax(torch.randn(t, 8, device="cuda", generator=gen), -1).bfloat16()

    def contract(xe, which, e):
        return reference.ref_linear(xe, "w4a16", experts[which][0][e]).to(xe.dtype)

    return x, idx, weights, stacks, loop_reference(x, weights, idx, contract)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("t", [1, 16, 64])
def test_cuda_grouped_qwen3_30b_shapes_against_the_contract(t):
    """Qwen3-30B-A3B's expert shapes (128 experts, 2048 / 768, top-8, g128 asym), the device
    packer's bytes, the default config, against the float64 contract; and both paths agree."""
    x, idx, weights, stacks, want = _qwen3_30b_step(t, 100 + t)
    y = moe_w4.grouped_moe(x, weights, idx, *stacks, path=moe_w4.MoEPath.CUDA)
    assert reference.rel_err(y, want) < TOL
    y_tr = moe_w4.grouped_moe(x, weights, idx, *stacks, path=moe_w4.MoEPath.TRITON)
    assert reference.rel_err(y, y_tr.float()) < TOL


@pytest.mark.gpu
@gpu
def test_cuda_grouped_is_deterministic_replays_and_leaves_the_workspace_zeroed():
    gen = torch.Generator().manual_seed(5)
    _, _, _, stacks = make_experts(16, 512, 256, "w4_t64x64", gen, group_size=128, sym=False)
    x = torch.randn(12, 512, generator=gen).bfloat16().cuda()
    idx = ROUTINGS["random"](12, 4, 16, gen).cuda()
    weights = torch.softmax(torch.randn(12, 4, generator=gen), -1).cuda()
    cfg = cuda_moe.MoECudaConfig(1, 2, 4, 8)  # split 2: the two partials' fp32 sum is order-free
    first = cuda_moe.grouped_moe_cuda(x, weights, idx, *stacks, cfg=cfg)
    assert all(torch.equal(first, cuda_moe.grouped_moe_cuda(x, weights, idx, *stacks, cfg=cfg)) for _ in range(3))
    no_pdl = cuda_moe.grouped_moe_cuda(x, weights, idx, *stacks, cfg=cuda_moe.MoECudaConfig(1, 2, 4, 8, pdl=False))
    assert torch.equal(no_pdl, first)  # the dependent launch changes when down starts, not what it computes
    split = cuda_moe.grouped_moe_cuda(x, weights, idx, *stacks, cfg=cuda_moe.MoECudaConfig(4, 3, 6, 4))
    assert reference.rel_err(split, first.float()) < 1e-2
    few = cuda_moe.MoECudaConfig(1, 1, 4, 8, True, 8, True, True)  # no atomics at all: bit-identical re-runs
    by_token = cuda_moe.grouped_moe_cuda(x, weights, idx, *stacks, cfg=few)
    assert torch.equal(by_token, cuda_moe.grouped_moe_cuda(x, weights, idx, *stacks, cfg=few))
    assert reference.rel_err(by_token, first.float()) < 1e-2
    assert not workspace(x.device, 1, torch.float32).any() and not workspace(x.device, 1, torch.int32).any()
    graph = torch.cuda.CUDAGraph()
    out = None
    with torch.cuda.graph(graph):
        out = cuda_moe.grouped_moe_cuda(x, weights, idx, *stacks, cfg=cfg)
    for _ in range(2):
        out.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, first)


@pytest.mark.gpu
@gpu
def test_few_token_steps_chained_by_pdl_match_the_plain_launches():
    """gate_up by pair as a PDL secondary of the kernel before it (pdl_gate_up) and down by token
    triggering at its store: two steps captured back to back in one graph, so that the second
    step's gate_up is placed while the first's down still reads h (which the second overwrites,
    the graph pool reusing its memory), give the bits of the plain launches, replay after replay."""
    gen = torch.Generator().manual_seed(11)
    _, _, _, stacks = make_experts(16, 512, 384, "w4_t64x64", gen, group_size=128, sym=False)
    xs = [torch.randn(1, 512, generator=gen).bfloat16().cuda() for _ in range(2)]
    ids = [ROUTINGS["random"](1, 8, 16, gen).cuda() for _ in range(2)]
    wts = [torch.softmax(torch.randn(1, 8, generator=gen), -1).cuda() for _ in range(2)]
    plain = cuda_moe.MoECudaConfig(1, 1, 4, 8, False, 8, True, True, 16)
    chained = dataclasses.replace(plain, pdl=True, pdl_gate_up=True)
    want = [cuda_moe.grouped_moe_cuda(xs[i], wts[i], ids[i], *stacks, cfg=plain) for i in range(2)]
    assert all(torch.equal(cuda_moe.grouped_moe_cuda(xs[i], wts[i], ids[i], *stacks, cfg=chained), want[i])
               for i in range(2))  # eager, and the library's attributes set before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [cuda_moe.grouped_moe_cuda(xs[i], wts[i], ids[i], *stacks, cfg=chained) for i in range(2)]
    for _ in range(3):
        for out in outs:
            out.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert all(torch.equal(out, w) for out, w in zip(outs, want))


def _graph_replay(x, weights, idx, stacks, cfg):
    """The step's y from one replay of a CUDA graph that captured it (its output zeroed first)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = cuda_moe.grouped_moe_cuda(x, weights, idx, *stacks, cfg=cfg)
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    return out


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("t", [1, 2])
def test_down_by_token_with_h_per_stage_matches_the_staged_one(t):
    """x_per_stage (moe_token.cuh: down by token reads h from L1 per stage, q - z in the MMA's
    operands) at Qwen3-30B-A3B's expert shapes against the float64 contract, within fp32 summation
    order of the staged kernel, and bit-identical re-runs and graph replays."""
    step = _qwen3_30b_step(t, 200 + t)
    xs = cuda_moe.default_config(t, 8, 128, 2048, 768, step[0].device)
    assert xs.gate_up_by_pair and xs.down_by_token and xs.x_per_stage
    _x_per_stage_against(step, xs, dataclasses.replace(xs, x_per_stage=False))


def _x_per_stage_against(step, xs, other):
    """The step's y with x per stage (config ``xs``) against the float64 contract, within fp32
    summation order of ``other`` (the same step summing x), bit-identical re-runs and a graph
    replay; y."""
    x, idx, weights, stacks, want = step
    y = cuda_moe.grouped_moe_cuda(x, weights, idx, *stacks, cfg=xs)
    assert reference.rel_err(y, want) < TOL
    assert reference.rel_err(y, cuda_moe.grouped_moe_cuda(x, weights, idx, *stacks, cfg=other).float()) < 2e-3
    assert torch.equal(cuda_moe.grouped_moe_cuda(x, weights, idx, *stacks, cfg=xs), y)
    assert torch.equal(_graph_replay(x, weights, idx, stacks, xs), y)
    return y


@pytest.mark.gpu
@gpu
def test_routed_kernels_with_x_per_stage_match_the_sums_of_x():
    """The routed gate_up and down reading x / h per stage (x_per_stage; the zero points in the MMA's
    operands) at Qwen3-30B-A3B's expert shapes, T = 64: against the float64 contract, within fp32
    summation order of the routed kernels with the table of the sums of x, bit-identical re-runs
    (split 1: no atomic sums), the same bits with down's sum in a launch of its own (combine), and
    graph replays."""
    step = _qwen3_30b_step(64, 300)
    x, idx, weights, stacks, _ = step
    table = cuda_moe.default_config(64, 8, 128, 2048, 768, x.device)
    assert not table.gate_up_by_pair and not table.down_by_token
    xs = dataclasses.replace(table, split_gate_up=1, split_down=1, x_per_stage=True, combine=False)
    y = _x_per_stage_against(step, xs, dataclasses.replace(xs, x_per_stage=False))
    # down's sum over top-k in a launch of its own: the same roundings in the same order, so the same bits
    assert torch.equal(cuda_moe.grouped_moe_cuda(x, weights, idx, *stacks, cfg=dataclasses.replace(xs, combine=True)),
                       y)
    assert not workspace(x.device, 1, torch.float32).any() and not workspace(x.device, 1, torch.int32).any()
