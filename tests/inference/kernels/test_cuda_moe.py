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
    # same + by token in 8, 16 or 32 warps, and in 16 reading h per stage), + the combine kernel per dtype,
    # + the layer in one launch per dtype x G x ASYM x 16 or 24 warps
    assert len(entries) == 2 * 2 * 2 * 2 * (5 + 8) + 2 + 2 * 2 * 2 * 2
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
    with pytest.raises(ValueError, match="pdl_gate_up needs gate_up_by_pair or fused"):
        cuda_moe.grouped_moe_cuda(x, w3, idx3, *stacks, cfg=cuda_moe.MoECudaConfig(pdl_gate_up=True))
    with pytest.raises(ValueError, match="down_by_token in 16 warps only"):  # the routed kernels: any
        cuda_moe.grouped_moe_cuda(x, w3[:, :2], idx3[:, :2], *stacks, cfg=cuda_moe.MoECudaConfig(
            down_by_token=True, down_warps=8, x_per_stage=True))
    with pytest.raises(ValueError, match="combine is built for the routed down at split_down 1"):
        cuda_moe.grouped_moe_cuda(x, w3, idx3, *stacks, cfg=cuda_moe.MoECudaConfig(split_down=2, combine=True))
    props = mock.Mock(multi_processor_count=132, shared_memory_per_block_optin=227 * 1024)
    with mock.patch.object(torch.cuda, "get_device_properties", return_value=props), \
            pytest.raises(ValueError, match="does not fit a CTA per SM"):  # 24 gate|up units on 1 SM's 16 warps
        cuda_moe.grouped_moe_cuda(x, w3, idx3, *stacks, cfg=cuda_moe.MoECudaConfig(fused=True, fused_sms=1))
    with pytest.raises(ValueError, match="block_m 12"):
        cuda_moe.grouped_moe_cuda(x, w3, idx3, *stacks, cfg=cuda_moe.MoECudaConfig(block_m=12))


def test_fused_plan():
    """Qwen3-30B-A3B at T = 1 on 132 SMs: 384 gate|up and 128 down units, 3 + 1 a CTA on 128 CTAs,
    151 KiB of weights each (3 x 16 stages x 2144 bytes + 8 pairs x 6 x 1072); on 114 SMs (4 + 2) and
    at T = 2 (6 + 2) they pass the shared memory, Mixtral's (hidden 4096, 14336) by far; more units
    than warps: none."""
    cap = 227 * 1024 - cuda_moe.FUSED_STATIC_SMEM
    assert cuda_moe.fused_plan(1, 8, 2048, 768, 128, True, 132, cap) == cuda_moe.FusedPlan(128, 3, 1, 154368)
    assert cuda_moe.fused_plan(1, 8, 2048, 768, 128, False, 132, cap).smem == 3 * 16 * 2112 + 8 * 6 * 1056
    assert cuda_moe.fused_plan(1, 8, 2048, 768, 64, True, 132, cap).smem == 3 * 16 * 2240 + 8 * 6 * 1120
    assert cuda_moe.fused_plan(1, 8, 2048, 768, 128, True, 114, cap) is None
    assert cuda_moe.fused_plan(2, 8, 2048, 768, 128, True, 132, cap) is None
    assert cuda_moe.fused_plan(1, 2, 4096, 14336, 128, True, 132, cap) is None
    assert cuda_moe.fused_plan(1, 8, 512, 128, 128, True, 1, 10**9) is None  # 64 units on one CTA's 16 warps
    # 24 gate|up units and 8 x 3 down pairs on one CTA: past 16 warps, within 24
    assert cuda_moe.fused_plan(1, 3, 128, 128, 128, True, 1, cap) is None
    assert cuda_moe.fused_plan(1, 3, 128, 128, 128, True, 1, cap, 24) == cuda_moe.FusedPlan(1, 24, 8, 24 * 2 * 1072
                                                                                              + 8 * 3 * 1072)
    small = cuda_moe.fused_plan(1, 2, 256, 128, 128, True, 4, cap)  # 16 units each: 4 a CTA on 4 CTAs
    assert small == cuda_moe.FusedPlan(4, 4, 4, 4 * 2 * 2 * 1072 + 4 * 2 * 1 * 1072)
    for t, k, h, i, sms in ((1, 8, 2048, 768, 132), (1, 1, 384, 384, 3), (2, 4, 256, 256, 132),
                            (1, 6, 2048, 1408, 132)):
        p = cuda_moe.fused_plan(t, k, h, i, 128, True, sms, cap)
        n_gu, n_d = t * k * -(-i // 16), t * -(-h // 16)
        # csrc recomputes the units from the grid: no more than planned, every unit placed, a CTA per SM
        assert p.ctas <= sms and -(-n_gu // p.ctas) <= p.units_gu and -(-n_d // p.ctas) <= p.units_down


def _fused_kernel_cover(t, k, hidden, inter, ctas, warps):
    """moe_fused_kernel's indexing, as written there, for every CTA and warp: {(pair, tile, stage):
    gate|up slot} and {(token, tile, pair j, stage): down slot}; asserts each slot is one warp's."""
    s_gu, s_d, tiles_gu, tiles_d = hidden // 128, inter // 128, -(-inter // 16), -(-hidden // 16)
    n_gu, n_d = t * k * tiles_gu, t * tiles_d
    u_cta, ud = -(-n_gu // ctas), -(-n_d // ctas)
    kw, kwd = warps // u_cta, warps // (ud * k)
    per, per_d = -(-s_gu // kw), -(-s_d // kwd)
    gu, dn = {}, {}
    for b in range(ctas):
        taken_gu, taken_d = set(), set()
        for warp in range(warps):
            ui, u = warp // kw, b + warp // kw * ctas
            if ui < u_cta and u < n_gu:
                lo = min(s_gu, warp % kw * per)
                for s in range(lo, min(s_gu, lo + per)):
                    slot = ui * s_gu + s
                    assert slot < u_cta * s_gu and slot not in taken_gu
                    taken_gu.add(slot)
                    gu[(u // tiles_gu, u % tiles_gu, s)] = (b, slot)
            di, j, v = warp // (k * kwd), warp // kwd % k, b + warp // (k * kwd) * ctas
            if di < ud and v < n_d:
                lo = min(s_d, warp % kwd * per_d)
                for s in range(lo, min(s_d, lo + per_d)):
                    slot = (di * k + j) * s_d + s
                    assert slot < ud * k * s_d and slot not in taken_d
                    taken_d.add(slot)
                    dn[(v // tiles_d, v % tiles_d, j, s)] = (b, slot)
    return gu, dn


@pytest.mark.parametrize("warps", cuda_moe.FUSED_WARPS)
@pytest.mark.parametrize("t,k,hidden,inter,sms", [(1, 8, 2048, 768, 132), (1, 2, 256, 128, 4), (2, 4, 256, 256, 132),
                                                  (1, 1, 384, 384, 3), (1, 8, 1024, 256, 40), (1, 6, 2048, 1408, 132)])
def test_fused_kernel_covers_every_stage_once(t, k, hidden, inter, sms, warps):
    """The plan's grid through the kernel's unit / warp / slot indexing (a model of moe_fused_kernel's
    arithmetic): every (pair, 16 rows, stage) of gate|up and (token, 16 rows, pair, stage) of down in
    exactly one warp's own slot of its CTA's allocation, in 16 warps and in 24."""
    plan = cuda_moe.fused_plan(t, k, hidden, inter, 128, True, sms, 227 * 1024, warps)
    gu, dn = _fused_kernel_cover(t, k, hidden, inter, plan.ctas, warps)
    assert len(gu) == t * k * -(-inter // 16) * (hidden // 128)
    assert len(dn) == t * -(-hidden // 16) * k * (inter // 128)


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


def _random_step(seed, layout_name, n_exp, hidden, inter, t, k, group, sym, act, routing):
    """A case's experts (format, layout, arch-neutral q, stacks), x, top-k ids and softmax weights."""
    gen = torch.Generator().manual_seed(seed)
    built = make_experts(n_exp, hidden, inter, layout_name, gen, group_size=group, sym=sym,
                         scale_dtype=str(act).removeprefix("torch."))
    x = torch.randn(t, hidden, generator=gen).to(act)
    idx = ROUTINGS[routing](t, k, n_exp, gen)
    return (*built, x, idx, torch.softmax(torch.randn(t, k, generator=gen), -1))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("layout_name,n_exp,hidden,inter,t,k,group,sym,act,routing,cfg", CASES)
def test_cuda_grouped_matches_the_emulated_loop(layout_name, n_exp, hidden, inter, t, k, group, sym, act, routing, cfg):
    fmt, layout, experts, stacks, x, idx, weights = _random_step(t * 7 + hidden + group, layout_name, n_exp, hidden,
                                                                 inter, t, k, group, sym, act, routing)
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
@pytest.mark.parametrize("plain", [cuda_moe.MoECudaConfig(1, 1, 4, 8, False, 8, True, True, 16),
                                   cuda_moe.MoECudaConfig(fused=True),
                                   cuda_moe.MoECudaConfig(fused=True, fused_warps=24)],
                         ids=["by_token", "fused", "fused24"])
def test_few_token_steps_chained_by_pdl_match_the_plain_launches(plain):
    """gate_up by pair as a PDL secondary of the kernel before it (pdl_gate_up) and down by token
    triggering at its store: two steps captured back to back in one graph, so that the second
    step's gate_up is placed while the first's down still reads h (which the second overwrites,
    the graph pool reusing its memory), give the bits of the plain launches, replay after replay.
    The same for the layer in one launch: the second's grid barrier reuses the counters the first
    re-zeroed."""
    gen = torch.Generator().manual_seed(11)
    _, _, _, stacks = make_experts(16, 512, 384, "w4_t64x64", gen, group_size=128, sym=False)
    xs = [torch.randn(1, 512, generator=gen).bfloat16().cuda() for _ in range(2)]
    ids = [ROUTINGS["random"](1, 8, 16, gen).cuda() for _ in range(2)]
    wts = [torch.softmax(torch.randn(1, 8, generator=gen), -1).cuda() for _ in range(2)]
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


FUSED_CASES = [  # (layout, E, hidden, inter, T, k, group, sym, act, routing, fused_sms, warps): units a CTA
    ("w4_t64x64", 6, 256, 128, 1, 2, 128, False, torch.bfloat16, "random", 4, 16),  # 4 + 4 on 4 CTAs
    ("w4_t16x64", 16, 512, 384, 1, 8, 64, True, torch.float16, "random", 0, 16),  # 2 + 1 on 96
    ("w4_t16x64", 16, 512, 384, 1, 8, 64, True, torch.float16, "random", 0, 24),  # 2 + 1 on 96: 12 and 3 warps each
    ("w4_t64x64", 8, 256, 256, 2, 4, 64, True, torch.bfloat16, "one_expert", 0, 16),  # T = 2: 1 + 1 on 128
    ("w4_t64x64", 8, 384, 384, 1, 1, 128, False, torch.bfloat16, "skip_expert_2", 3, 16),  # top-1: 8 + 8, 2 warps each
    ("w4_t16x64", 16, 1024, 256, 1, 8, 128, False, torch.float16, "random", 40, 16),  # 4 + 2: a warp per down pair
    ("w4_t64x64", 6, 128, 128, 1, 3, 128, True, torch.bfloat16, "random", 1, 24),  # 24 + 8 on one CTA: a warp each
]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("layout_name,n_exp,hidden,inter,t,k,group,sym,act,routing,sms,warps", FUSED_CASES)
def test_fused_layer_matches_the_emulated_loop(layout_name, n_exp, hidden, inter, t, k, group, sym, act, routing,
                                               sms, warps):
    """The layer in one launch (csrc/moe_fused.cuh) against the per-expert loop of the layouts' CPU
    emulator: several gate|up and down units a CTA (fused_sms spreads small layers over few SMs), idle
    warps, both layouts, groups, symmetries and dtypes, int32 / int64 ids, fp32 / 16-bit weights, an
    expert with no token, 16 and 24 warps; bit-identical re-runs (no atomic sums) and the barrier's
    counters left zeroed."""
    fmt, layout, experts, stacks, x, idx, weights = _random_step(t * 11 + hidden + group, layout_name, n_exp, hidden,
                                                                 inter, t, k, group, sym, act, routing)
    cfg = cuda_moe.MoECudaConfig(fused=True, fused_sms=sms, fused_warps=warps)
    xd = x.cuda()
    for ids, wts in ((idx, weights), (idx.int(), weights.to(act))):
        want = loop_reference(x, wts, idx, emulated(fmt, layout, experts))
        y = cuda_moe.grouped_moe_cuda(xd, wts.cuda(), ids.cuda(), *stacks, cfg=cfg)
        assert y.dtype == act and reference.rel_err(y.cpu(), want) < TOL, f"{ids.dtype} ids, {wts.dtype} weights"
        assert torch.equal(cuda_moe.grouped_moe_cuda(xd, wts.cuda(), ids.cuda(), *stacks, cfg=cfg), y)
        assert not workspace(xd.device, 1, torch.int32).any()


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("warps", cuda_moe.FUSED_WARPS)
def test_fused_layer_at_qwen3_30b_shapes(warps):
    """The layer in one launch at Qwen3-30B-A3B's expert shapes, T = 1 (128 CTAs of 3 + 1 units on
    an H100 or H200) against the float64 contract, within fp32 summation order of the two few-token
    kernels, bit-identical re-runs and a graph replay."""
    step = _qwen3_30b_step(1, 400)
    two = cuda_moe.default_config(1, 8, 128, 2048, 768, step[0].device)
    fused = dataclasses.replace(two, fused=True, fused_warps=warps)
    _x_per_stage_against(step, fused, dataclasses.replace(two, fused=False))


def _x_per_stage_against(step, xs, other):
    """The step's y with x per stage (config ``xs``) against the float64 contract, within fp32
    summation order of ``other`` (the same step summing x), bit-identical re-runs and a graph
    replay; y."""
    x, idx, weights, stacks, want = step
    y = cuda_moe.grouped_moe_cuda(x, weights, idx, *stacks, cfg=xs)
    assert reference.rel_err(y, want) < TOL
    assert reference.rel_err(y, cuda_moe.grouped_moe_cuda(x, weights, idx, *stacks, cfg=other).float()) < 2e-3
    assert torch.equal(cuda_moe.grouped_moe_cuda(x, weights, idx, *stacks, cfg=xs), y)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = cuda_moe.grouped_moe_cuda(x, weights, idx, *stacks, cfg=xs)
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, y)
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
