"""Benchmark of the linear kernels against torch's own paths, on one GPU (benchmarks/bench_linear.py
and ``turbopack bench`` drive it; docs/benchmarks.md records the runs).

Method (see /docs/benchmarks.md): every timed call is replayed from a CUDA graph, the median of
several replays over the calls in it; each call in a graph reads a different copy of the weights,
and the copies together exceed 2.5x the L2 cache, so no weight byte is served from L2. The floor
is the bytes a call must move (packed weights + x + y) over the measured device-to-device copy
bandwidth (read + write counted). Correctness: every kernel variant that is timed is first run on
fresh random inputs into a NaN-poisoned output and compared with the float64 reference of its
layout's contract (reference.ref_linear): relative Frobenius error < 1e-2.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from turbopack.formats import Format, get_format
from turbopack.formats.fp8 import quantize_rows_fp8
from turbopack.formats.int8 import quantize_rows_int8
from turbopack.inference.kernels import reference
from turbopack.inference.kernels.config import KernelConfig, KernelName
from turbopack.inference.kernels.dispatch import FAMILIES
from turbopack.inference.kernels.graph_capture import capture
from turbopack.layouts import get_layout

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
#: --model: each family's decoder-layer linears as N x K, from its config (hidden H, intermediate I,
#: heads h of size d, KV heads kv): qkv (h + 2 kv) d x H, o H x h d, gate_up 2 I x H, down H x I.
#: The shapes of benchmarks/bench_e2e.py's --shape presets (a test keeps the two in step), so the
#: tuned table holds an entry for each shape the end-to-end run decodes.
MODELS = {
    "llama3-8b": SHAPES,
    "qwen3-8b": {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (24576, 4096), "down": (4096, 12288)},
    "gemma2-9b": {"qkv": (8192, 3584), "o": (3584, 4096), "gate_up": (28672, 3584), "down": (3584, 14336)},
    "phi4-mini": {"qkv": (5120, 3072), "o": (3072, 3072), "gate_up": (16384, 3072), "down": (3072, 8192)},
}
MS = (1, 4, 16, 64, 256, 2048)
#: format -> (layout on sm90, format params)
SETUPS = {
    "w4a16": ("w4_t64x64", {"group_size": 128, "sym": False}),
    "nvfp4": ("nvfp4_t16x64", {}),   # weight-only NVFP4 (Triton decode to bf16), beside W4A16
    "w8a16": ("i8_t64x64", {}),
    "w8a8": ("i8_rowmajor", {}),
    "fp8": ("fp8_rowmajor", {}),
    "fp8_upcast": ("fp8_t16x64_upcast", {}),
}
TOL = 1e-2


def copy_bandwidth(nbytes: int = 1 << 30) -> dict[str, float]:
    """Measured device-to-device copy bandwidth in bytes/s (read + write counted), two ways:
    cudaMemcpy (tensor.copy_) and an SM copy kernel (torch's vectorized elementwise kernel)."""
    a = torch.randn(nbytes // 4, device="cuda")
    b = torch.empty_like(a)
    t_memcpy = time_us([lambda: b.copy_(a)], min_calls=4)
    t_kernel = time_us([lambda: torch.mul(a, 1.0, out=b)], min_calls=4)
    return {"memcpy": 2 * nbytes / (t_memcpy * 1e-6), "kernel": 2 * nbytes / (t_kernel * 1e-6)}


def time_us(fns: list[Callable[[], object]], min_calls: int = 24, reps: int = 11) -> float:
    """Median µs per call: the calls (rotating through ``fns``) replayed from one CUDA graph."""
    for f in fns:
        f()
    torch.cuda.synchronize()
    inner = max(1, math.ceil(min_calls / len(fns)))
    g = torch.cuda.CUDAGraph()
    with capture(g):
        for _ in range(inner):
            for f in fns:
                f()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0.record()
        g.replay()
        t1.record()
        t1.synchronize()
        times.append(t0.elapsed_time(t1))
    del g
    return statistics.median(times) * 1000 / (inner * len(fns))


@dataclass
class Weight:
    """One layer's weight in every form a benchmark needs, with rotation copies."""

    fmt_name: str
    fmt: Format
    layout_name: str
    shape: tuple[int, int]
    q: dict[str, torch.Tensor]
    copies: list[dict[str, torch.Tensor]]
    nbytes: int
    extra: dict[str, object] = field(default_factory=dict)


def n_copies(nbytes: int, l2_bytes: int) -> int:
    return max(2, math.ceil(2.5 * l2_bytes / nbytes))


def make_weight(setup: str, shape: tuple[int, int], l2_bytes: int, gen: torch.Generator) -> Weight:
    layout_name, params = SETUPS[setup]
    fmt_name = "fp8" if setup.startswith("fp8") else setup
    fmt = get_format(fmt_name, **params)
    w = torch.randn(shape, device="cuda", generator=gen) * 0.02
    q = fmt.quantize(w)
    packed = reference.pack(q, get_layout(layout_name))
    nbytes = sum(t.numel() * t.element_size() for t in packed.values())
    copies = [packed] + [{k: t.clone() for k, t in packed.items()} for _ in range(n_copies(nbytes, l2_bytes) - 1)]
    return Weight(fmt_name, fmt, layout_name, shape, q, copies, nbytes)


def ours(wt: Weight, cfg: KernelConfig) -> Callable[[torch.Tensor, dict, torch.Tensor | None], torch.Tensor]:
    run = FAMILIES.get(wt.layout_name).run
    return lambda x, packed, out=None: run(x, packed, wt.shape, None, cfg, out, wt.fmt)


def check(wt: Weight, cfg: KernelConfig, x: torch.Tensor, ref: torch.Tensor | None = None) -> float:
    """Relative error of our kernel on x (NaN-poisoned output) against ``ref`` (default: the
    reference of the math that ``cfg``'s kernel computes)."""
    ref = reference_out(wt, x, cfg) if ref is None else ref
    out = torch.full((x.shape[0], wt.shape[0]), float("nan"), dtype=x.dtype, device=x.device)
    ours(wt, cfg)(x, wt.copies[0], out)
    torch.cuda.synchronize()
    return reference.rel_err(out, ref)


def reference_out(wt: Weight, x: torch.Tensor, cfg: KernelConfig | None = None) -> torch.Tensor:
    """The layout's contract; the CUDA 8-bit decode kernel keeps fp8 and w8a8 activations 16-bit
    (cuda_w8)."""
    cuda8 = wt.fmt_name in reference.QUANTIZED_X and cfg is not None and cfg.kernel is KernelName.CUDA
    weights_only = get_layout(wt.layout_name).weights_only or cuda8
    return reference.ref_linear(x, wt.fmt_name, wt.q, None, weights_only=weights_only)


def time_ours(wt: Weight, cfg: KernelConfig, x: torch.Tensor) -> float:
    f = ours(wt, cfg)
    return time_us([lambda p=p: f(x, p) for p in wt.copies])


# -- torch peers -----------------------------------------------------------------------------------

def bf16_weights(wt: Weight, l2_bytes: int) -> list[torch.Tensor]:
    key = "bf16"
    if key not in wt.extra:
        n, k = wt.shape
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        wt.extra[key] = [w] + [w.clone() for _ in range(max(1, math.ceil(2.5 * l2_bytes / w.nbytes)) - 1)]
    return wt.extra[key]  # type: ignore[return-value]


def tinygemm_weights(wt: Weight) -> tuple[list[torch.Tensor], torch.Tensor, int]:
    """torch._weight_int4pack_mm operands for the same codes (w = (q - 8)*s + (8 - z)*s)."""
    if "tinygemm" not in wt.extra:
        codes = reference.w4_codes(wt.q["qweight"])
        w_u8 = ((codes[:, ::2] << 4) | codes[:, 1::2]).to(torch.uint8).contiguous()
        packed = torch._convert_weight_to_int4pack(w_u8, 8)
        s = wt.q["scales"].float()
        z = wt.q["zeros"].float()
        sz = torch.stack([s, (8 - z) * s], -1).transpose(0, 1).contiguous().to(torch.bfloat16)
        copies = [packed] + [packed.clone() for _ in range(len(wt.copies) - 1)]
        wt.extra["tinygemm"] = (copies, sz, wt.fmt.group_size)  # type: ignore[attr-defined]
    return wt.extra["tinygemm"]  # type: ignore[return-value]


def peers(wt: Weight, x: torch.Tensor, l2_bytes: int) -> dict[str, list[Callable[[], object]]]:
    """name -> list of rotating callables for each torch path comparable to ``wt``'s kernel."""
    w16 = bf16_weights(wt, l2_bytes)
    out: dict[str, list] = {"bf16": [lambda w=w: F.linear(x, w) for w in w16]}
    n, k = wt.shape
    if wt.fmt_name == "w4a16":
        copies, sz, g = tinygemm_weights(wt)
        out["tinygemm"] = [lambda p=p: torch._weight_int4pack_mm(x, p, g, sz) for p in copies]
    elif wt.layout_name in ("i8_rowmajor", "fp8_rowmajor"):
        fp8 = wt.layout_name == "fp8_rowmajor"
        ws = [p["qweight"].view(-1, p["qweight"].shape[-1]) for p in wt.copies]
        sw = wt.copies[0]["scales"]
        if fp8:
            sb = sw.view(1, -1)
            qx, sx = quantize_rows_fp8(x)
            sx = sx[:, None]
            out["scaled_mm"] = [
                lambda w=w: torch._scaled_mm(qx, w.t(), scale_a=sx, scale_b=sb, out_dtype=torch.bfloat16) for w in ws
            ]

            def torch_path(w):
                q2, s2 = quantize_rows_fp8(x)
                return torch._scaled_mm(q2, w.t(), scale_a=s2[:, None], scale_b=sb, out_dtype=torch.bfloat16)
        else:
            qx, sx = quantize_rows_int8(x)
            if qx.shape[0] <= 16:  # torch._int_mm needs M > 16
                qx = F.pad(qx, (0, 0, 0, 17 - qx.shape[0]))
            out["int_mm"] = [lambda w=w: torch._int_mm(qx, w.t()) for w in ws]

            def torch_path(w):
                q2, s2 = quantize_rows_int8(x)
                m = q2.shape[0]
                acc = torch._int_mm(F.pad(q2, (0, 0, 0, max(0, 17 - m))), w.t())[:m]
                return (acc.float() * s2[:, None] * sw[None, :]).to(x.dtype)
        out["torch_path"] = [lambda w=w: torch_path(w) for w in ws]
    return out
