"""The CUDA C++ grouped W4A16 MoE decode (csrc/moe_w4.cu; built by cuda_build at first use),
launched on torch's current stream (CUDA-graph capturable, no host sync).

One call is two launches: gate|up for every selected (token, expert) pair with h = silu(g) * u
in the epilogue, then down with the routing weight and the deterministic fp32 sum over top-k,
each CTA finding its expert and token rows from the top-k ids itself (no align launch). Past a
few tokens the sum over top-k is a third launch (``combine``). It reads
the experts' stacked w4_t16x64 / w4_t64x64 tensors (moe_w4.StackedW4) as packed, group 64 or
128, bf16 or fp16 activations with scales of the same dtype. moe_w4.grouped_moe runs it where
``supports`` holds and the Triton grouped kernels everywhere else (the CPU interpreter included).

Config: the K split and ring depth of each kernel, token rows per block, PDL, and the few-token
kernels (gate_up by pair, down by token) in place of the routed ones (``MoECudaConfig``).
``default_config`` is a registered rule, not a tuned table entry: the grouped grid depends on the
routing (experts hit x row tiles), which the dense table's (N x K, M bucket) key cannot express;
bench_moe.py sweeps the candidates and reports the winner beside it.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass

import torch

from turbopack.inference.kernels import cuda_build
from turbopack.inference.kernels.cuda_build import ptr as _p
from turbopack.inference.kernels.epilogue import workspace
from turbopack.inference.kernels.interpret import interpreting

SRC = cuda_build.CSRC / "moe_w4.cu"
GROUPS = (64, 128)
MAX_PAIRS = 2048  # T * top_k (csrc kMaxPairs)
MAX_EXPERTS = 1024
STAGES_GATE_UP = (4, 6)  # ring slots of (gate, up) 128-k stages: 2 KiB a warp each
STAGES_DOWN = (4, 8)  # ring slots of one 128-k stage: 1 KiB a warp
TOKEN_WARPS = 8  # gate_up by pair's warps (csrc kTokWarps); top-k must divide down by token's
DOWN_WARPS = (8, 16, 32)  # down by token's warps: k of them, or W / k per pair
MAX_DOWN_SLOTS = 128  # down by token's warps x ring slots (csrc kMaxDownSlots: 32 x 8 is 282 KiB of shared memory)
_DTYPE_CODE = {torch.bfloat16: 0, torch.float16: 1}
_DIMS = ctypes.c_int * 6
_SIGNATURES = {"turbopack_moe_w4": [ctypes.c_void_p] * 16 + [_DIMS, _DIMS] + [ctypes.c_int] * 20 + [ctypes.c_void_p]}


@dataclass(frozen=True)
class MoECudaConfig:
    """Knobs of one grouped step; default_config picks them per shape and token count."""

    split_gate_up: int = 1
    split_down: int = 1
    stages_gate_up: int = 4
    stages_down: int = 8
    pdl: bool = True  # down as a programmatic dependent launch of gate_up (sm_90+; ignored below)
    block_m: int = 0  # token rows per block, 8 or 16; 0: block_rows' rule
    #: gate_up as a CTA per (16 rows, pair), K in eighths summed in shared memory (split_gate_up
    #: unused): no routing pass, x copied before the id is read, no workspace
    gate_up_by_pair: bool = False
    #: down as a CTA per (16 rows, token) over its top-k pairs, summed in shared memory (split_down
    #: unused; top-k must divide down_warps): no workspace, counter or last CTA
    down_by_token: bool = False
    down_warps: int = 8  # down by token's warps per CTA, 8, 16 or 32 (more warps: fewer stages each)
    #: gate_up by pair as a programmatic dependent launch of the kernel before it (sm_90+): its CTAs
    #: are placed while that kernel finishes and wait before reading x and the ids
    pdl_gate_up: bool = False
    #: x (h) stage by stage from L1, the zero points removed in the MMA's operands, as the dense rows
    #: with x per stage (cuda_w4.ROWS_X): no staged slice and no table of the sums of x. Down by token
    #: (in 16 warps only) and the routed gate_up and down; gate_up by pair keeps its staged x row
    x_per_stage: bool = False
    #: the routed down (split_down 1) stores its 16-bit results by pair and a third launch sums them
    #: over top-k (a dependent launch where pdl): no fence, counters or last CTA in down's CTAs
    combine: bool = False


def library(device: torch.device) -> ctypes.CDLL:
    return cuda_build.library(SRC, device, _SIGNATURES)


def _aligned(*ts: torch.Tensor | None) -> bool:
    return all(t is None or (t.is_contiguous() and t.data_ptr() % 16 == 0) for t in ts)


def supports(x2: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor, gate, up, down) -> bool:
    """Can the CUDA grouped decode run this step (stacks: moe_w4.StackedW4)?"""
    if interpreting() or not x2.is_cuda or x2.dtype not in _DTYPE_CODE or cuda_build.nvcc() is None:
        return False
    inter, hidden = gate.shape
    lins = (gate, up, down)
    return (torch.cuda.get_device_capability(x2.device) >= (8, 0)
            and gate.group in GROUPS and all(s.group == gate.group for s in lins)
            and up.shape == gate.shape and down.shape == (hidden, inter) and hidden % 128 == 0 and inter % 128 == 0
            and all(s.scales.dtype == x2.dtype for s in lins)
            and len({s.zeros is None for s in lins}) == 1
            and all(_aligned(s.qweight, s.scales, s.zeros) for s in lins)
            and 1 <= idx.numel() <= MAX_PAIRS and gate.qweight.shape[0] <= MAX_EXPERTS
            and weights.dtype in (x2.dtype, torch.float32)
            and x2.stride(1) == 1 and x2.stride(0) % 8 == 0 and x2.data_ptr() % 16 == 0)


def _split(ctas: int, stages: int, sms: int, min_per: int) -> int:
    """K split that brings ``ctas`` CTAs to about three per SM, keeping >= ``min_per`` stages per
    CTA, evened out so that no CTA's K range is empty."""
    split = max(1, min(math.ceil(3 * sms / max(1, ctas)), stages // min_per))
    per = math.ceil(stages / split)
    return math.ceil(stages / per)


def block_rows(tokens: int, top_k: int, n_experts: int) -> int:
    """8 token rows per block (one MMA token column: fewer registers and instructions per stage)
    unless the experts hit get more than 6 tokens each on average: then 16, so that an expert's
    weights are not read once per 8 of its tokens. (T = 64 at top-8 of 128: 4 on average, a few
    experts over 8 take a second block.)"""
    n = tokens * top_k
    return 16 if n / min(n_experts, n) > 6 else 8


def block_slots(pairs: int, n_experts: int, bm: int) -> int:
    """The block slots of each routed grid: the most blocks of ``bm`` rows any routing of ``pairs``
    (token, expert) pairs makes (csrc/moe_w4.cu run's ``blocks``); slots past a routing's exit."""
    return min(pairs, min(n_experts, pairs) + pairs // bm)


def ring(per: int, depths: tuple[int, ...]) -> int:
    """The shallowest ring that has a CTA's whole K slice (``per`` stages) in flight from its first
    copies (depth - 1 >= per: a short slice then costs one DRAM round trip, in less shared memory
    than a deeper ring); 4, the dense decode's tuned depth, where none does."""
    return next((d for d in depths if d - 1 >= per), 4)


#: at most this many tokens, top-k dividing 8: the few-token kernels (gate_up by pair, down by token)
FEW_TOKENS = 2
#: the routed down's sum over top-k in a launch of its own (combine) past this many of its CTAs an
#: SM: it won at 31 (T = 64, 4160 CTAs on 132 SMs) and lost at 2 (T = 1, 256), run 24; 8 lies between
COMBINE_CTAS_PER_SM = 8


def few_tokens(tokens: int, top_k: int) -> bool:
    """The few-token shape (batch-1 and -2 decode), where the few-token kernels (csrc/moe_token.cuh)
    replace the routed ones: their CTAs sum their parts in shared memory, where the routed
    kernels' split-K store cost 4.5 of the layer's 20.4 µs (Qwen3-30B-A3B at T = 1, H100, run 13)."""
    return tokens <= FEW_TOKENS and top_k <= TOKEN_WARPS and TOKEN_WARPS % top_k == 0


def default_config(tokens: int, top_k: int, n_experts: int, hidden: int, inter: int,
                   device: torch.device) -> MoECudaConfig:
    """Split each matmul over K until (experts hit, at most) x row tiles x split covers the SMs
    about three times (the dense decode's rule, cuda_w4.default_split), keeping >= 2 stages per CTA
    (a ring that never holds two stages has nothing in flight while it computes); rings by ``ring``.
    Few tokens (``few_tokens``): gate_up by pair (8 warps) and down by token (16 warps, reading h per
    stage: x_per_stage, 0.7 and 1.1 µs faster than the staged slice at T = 1 and 2, run 18), each
    warp's whole K range in its ring where it fits; down's ring is 8 slots where its grid is one CTA
    per SM or less. Measured twice on the H100 (bench_moe, Qwen3-30B-A3B, run 13), 3 stages a warp: at T = 1
    (128 CTAs) ring 8 took 13.4-13.5 µs, ring 4 14.4-14.5; at T = 2 (256) ring 4 took 20.7, ring 8
    24.3-24.4 (one CTA per SM in the larger ring: two waves). The slots past 3 hold nothing; the
    larger allocation keeps down's CTAs off the SMs that gate_up still fills.
    Routed (more tokens): x per stage in both kernels, down's ring 4 and, where down's grid is many
    waves, its sum over top-k in a launch of its own (combine). bench_moe on the H100 (run 24, T = 64,
    split 1, ring 4 / 4): 176.3 µs as before, 171.7 with x per stage, 166.5 with combine, 161.4 with
    both (-8.5%; the old default, down's ring 8: 177.5). Down's ring 4 beat 8 in each of those four
    (by 2.6-4.4%: a CTA's 6 stages need not all be in flight where 32 CTAs an SM queue behind it).
    At T = 1 on the routed kernels x per stage also won (18.6 -> 18.0 µs) and combine lost (18.6 ->
    19.9: its launch costs more than 256 CTAs' fences and counters)."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    hit = min(n_experts, tokens * top_k)
    s_gu, s_d = hidden // 128, inter // 128
    if few_tokens(tokens, top_k):
        dw = 16  # measured (run 13); 32, one CTA per SM at 1024 threads, is a candidate not yet timed
        per_gu, per_d = math.ceil(s_gu / TOKEN_WARPS), math.ceil(s_d / (dw // top_k))
        one_wave = tokens * math.ceil(hidden / 16) <= sms  # down's grid: one CTA per SM at most
        return MoECudaConfig(stages_gate_up=ring(per_gu, STAGES_GATE_UP),
                             stages_down=STAGES_DOWN[-1] if one_wave else ring(per_d, STAGES_DOWN),
                             block_m=8, gate_up_by_pair=True, down_by_token=True, down_warps=dw, x_per_stage=True)
    split_gu = _split(hit * math.ceil(inter / 64), s_gu, sms, 2)
    split_d = _split(hit * math.ceil(hidden / 64), s_d, sms, 2)
    bm = block_rows(tokens, top_k, n_experts)
    blocks = block_slots(tokens * top_k, n_experts, bm)
    return MoECudaConfig(split_gate_up=split_gu, split_down=split_d,
                         stages_gate_up=ring(math.ceil(s_gu / split_gu), STAGES_GATE_UP),
                         stages_down=STAGES_DOWN[0], block_m=bm, x_per_stage=True,
                         combine=split_d == 1 and blocks * math.ceil(hidden / 64) > COMBINE_CTAS_PER_SM * sms)


def _check(cfg: MoECudaConfig, bm: int, top_k: int) -> None:
    """ValueError naming the knob, for combinations the library does not build."""
    if cfg.stages_gate_up not in STAGES_GATE_UP or cfg.stages_down not in STAGES_DOWN:
        raise ValueError(f"ring stages {cfg.stages_gate_up}/{cfg.stages_down}: gate_up takes {STAGES_GATE_UP}, "
                         f"down {STAGES_DOWN}")
    if bm not in (8, 16):
        raise ValueError(f"block_m {bm}: 8 or 16 token rows")
    if cfg.x_per_stage and cfg.down_by_token and cfg.down_warps != 16:
        raise ValueError("x_per_stage builds down_by_token in 16 warps only (down_warps=16, or x_per_stage=False)")
    if cfg.combine and (cfg.down_by_token or cfg.split_down != 1):
        raise ValueError("combine is built for the routed down at split_down 1 (down_by_token=False, split_down=1)")
    if cfg.pdl_gate_up and not cfg.gate_up_by_pair:
        raise ValueError("pdl_gate_up needs gate_up_by_pair: the routed gate_up reads the ids before any wait")
    if cfg.down_by_token and (cfg.down_warps not in DOWN_WARPS or top_k > cfg.down_warps or cfg.down_warps % top_k):
        raise ValueError(f"down_by_token in {cfg.down_warps} warps at top-{top_k}: down_warps is one of {DOWN_WARPS} "
                         "and top-k must divide it")
    if cfg.down_by_token and cfg.down_warps * cfg.stages_down > MAX_DOWN_SLOTS:
        raise ValueError(f"down_by_token in {cfg.down_warps} warps of {cfg.stages_down} ring slots: at most "
                         f"{MAX_DOWN_SLOTS} slots a CTA (1.1 KiB each: shared memory), so stages_down 4 at 32 warps")


def grouped_moe_cuda(x2: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor, gate, up, down,
                     cfg: MoECudaConfig | None = None) -> torch.Tensor:
    """sum_k weights[t, k] * down_e(silu(gate_e(x_t)) * up_e(x_t)), e = idx[t, k], on the CUDA
    grouped decode: x2 [T, hidden] -> [T, hidden] in x2's dtype."""
    t, top_k = idx.shape
    n_exp = gate.qweight.shape[0]
    inter, hidden = gate.shape
    dev = x2.device
    cfg = cfg or default_config(t, top_k, n_exp, hidden, inter, dev)
    bm = cfg.block_m or block_rows(t, top_k, n_exp)
    _check(cfg, bm, top_k)
    n = t * top_k
    ids = idx.reshape(-1).contiguous()
    if ids.dtype not in (torch.int32, torch.int64):
        ids = ids.to(torch.int32)
    wts = weights.reshape(-1).contiguous()
    blocks = block_slots(n, n_exp, bm)
    ws = workspace(dev, n * max(2 * inter, hidden), torch.float32)
    cnt = workspace(dev, max(blocks * math.ceil(inter / 64), t * math.ceil(hidden / 64)), torch.int32)
    h = torch.empty(n, inter, dtype=x2.dtype, device=dev)
    y = torch.empty(t, hidden, dtype=x2.dtype, device=dev)
    sm90 = torch.cuda.get_device_capability(dev) >= (9, 0)
    pdl, pdl_gu = cfg.pdl and sm90, cfg.pdl_gate_up and sm90
    np_, kt, kgp, tn = gate.layout_dims
    gu_dims = _DIMS(inter, np_, hidden, kt, kgp, tn)
    np_, kt, kgp, tn = down.layout_dims
    d_dims = _DIMS(hidden, np_, inter, kt, kgp, tn)
    rc = library(dev).turbopack_moe_w4(
        _p(x2), _p(ids), _p(wts), _p(gate.qweight), _p(gate.scales), _p(gate.zeros), _p(up.qweight), _p(up.scales),
        _p(up.zeros), _p(down.qweight), _p(down.scales), _p(down.zeros), _p(h), _p(y), _p(ws), _p(cnt),
        gu_dims, d_dims, t, top_k, n_exp, gate.group, x2.stride(0), int(ids.dtype == torch.int64),
        int(wts.dtype == torch.float32), bm, cfg.split_gate_up, cfg.split_down, cfg.stages_gate_up, cfg.stages_down,
        int(cfg.gate_up_by_pair), int(cfg.down_by_token), cfg.down_warps, int(pdl), int(pdl_gu),
        int(cfg.x_per_stage), int(cfg.combine), _DTYPE_CODE[x2.dtype], cuda_build.stream(dev))
    if rc != 0:
        raise RuntimeError(f"turbopack_moe_w4 failed (code {rc}; T={t} k={top_k} E={n_exp} hidden={hidden} "
                           f"inter={inter} G={gate.group} {cfg})")
    return y


__all__ = ["MoECudaConfig", "block_rows", "block_slots", "default_config", "few_tokens", "grouped_moe_cuda", "ring",
           "supports"]
