"""`turbopack check`: the whole path on a model, with numbers and pass/fail.

For every format and method (RTN; AWQ, GPTQ and SmoothQuant on the bundled calibration text):
quantize the model into a temp folder and run the reference model with the quantized weights
(the format's own math, incl. W8A8/FP8 activation quantization) on held-out text; compare with
the unquantized model: perplexity (threshold: allowed relative increase), and, reported beside
it, the per-token KL divergence and top-1 agreement (turbopack.evaluation.metrics). Then pack
that folder for each architecture and run the packed bytes through the CPU emulator of the
layout, which reads them as that arch's kernel does; those rows compare logits with the
reference of the same quantized weights (threshold: relative error). On a machine with a GPU,
each case is also packed for the local arch and run through the real kernels with the runtime's
defaults (fused projections, CUDA graphs): logits vs that layout's emulator, perplexity vs the
bf16 model on the same GPU, and greedy decode tokens/s.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from turbopack.device import resolve_device
from turbopack.evaluation.metrics import Reference, compare, heldout_ids, windows_of
from turbopack.formats import format_from_params, get_format
from turbopack.inference.loader import load, local_arch
from turbopack.inference.qlinear import Backend
from turbopack.packer.pack import pack
from turbopack.packer.quantize import quantize

#: Calibration for check's AWQ/GPTQ/SmoothQuant rows: 32 windows of 256 tokens of the bundled
#: calibration text (a quarter of `quantize`'s default 128 x 512 tokens), to keep check short.
CHECK_CALIB = {"calib_samples": 32, "calib_seqlen": 256, "seed": 0}


@dataclass(frozen=True)
class CheckCase:
    label: str
    format: str
    params: dict
    max_ppl_increase_pct: float
    method: str = "rtn"
    smooth: bool = False

    @property
    def method_name(self) -> str:
        return f"{self.method}{'+smooth' if self.smooth else ''}"

    def quantize_kwargs(self) -> dict:
        calibrated = self.method != "rtn" or self.smooth
        return {**self.params, "method": self.method, "smooth": self.smooth, **(CHECK_CALIB if calibrated else {})}


W4_ASYM, W4_SYM = {"group_size": 64}, {"group_size": 64, "sym": True}

# Thresholds (relative perplexity increase over bf16): int8 is near-lossless, e4m3 keeps 3
# mantissa bits, int4 loses most. Measured on the bundled model (64 windows, 2026-12-03, 1200-step
# model): w4 asym +0.08%, w4 sym -0.15%, w8a16 +0.00%, w8a8 +0.04%, fp8 -0.01%; the calibrated
# rows are in docs/quality.md. A calibrated row has its format's threshold. nvfp4 (RTN only; 4.5 bits,
# e4m3 scale per 16): +0.22% on all 117 windows (docs/quality.md), so the w4 asym bound.
CASES = (
    CheckCase("w4a16 g64 asym", "w4a16", W4_ASYM, 2.0),
    CheckCase("w4a16 g64 asym", "w4a16", W4_ASYM, 2.0, method="awq"),
    CheckCase("w4a16 g64 asym", "w4a16", W4_ASYM, 2.0, method="gptq"),
    CheckCase("w4a16 g64 sym", "w4a16", W4_SYM, 3.0),
    CheckCase("w4a16 g64 sym", "w4a16", W4_SYM, 3.0, method="gptq"),
    CheckCase("w8a16", "w8a16", {}, 0.5),
    CheckCase("w8a8", "w8a8", {}, 0.5),
    CheckCase("w8a8", "w8a8", {}, 0.5, smooth=True),
    CheckCase("fp8", "fp8", {}, 1.0),
    CheckCase("nvfp4", "nvfp4", {}, 2.0),
)
METHODS = ("rtn", "awq", "gptq", "smooth")


def select_cases(methods: tuple[str, ...] = METHODS) -> tuple[CheckCase, ...]:
    """The cases whose method (``smooth`` for SmoothQuant) is in ``methods``."""
    from turbopack.errors import TurbopackError

    bad = sorted(set(methods) - set(METHODS))
    if bad:
        raise TurbopackError(f"--methods {','.join(bad)}: unknown; choose from {', '.join(METHODS)}")
    return tuple(c for c in CASES if ("smooth" if c.smooth else c.method) in methods)


#: Packed rows: the same quantized weights through each arch's layout (emulator or kernels) vs
#: the format's reference math. With 16-bit activations the only difference is float32
#: accumulation order (~1e-7); with 8-bit activations an order difference can move a
#: per-token-quantized activation across a rounding boundary in the next layer, one e4m3/int8
#: step, so the bound is looser (measured: fp8 on sm90 9.5e-4).
PACK_ARCHS = ("sm80", "sm90")
MAX_LOGITS_REL_ERR = {16: 1e-3, 8: 1e-2}
#: GPU rows: bf16 activations through the kernels vs the fp32 emulator of the same packed bytes.
#: bf16 rounds every activation (2^-9 relative) and the W4 decode kernel uses exact fp32 weights
#: where the contract rounds them to 16 bits; an 8-bit-activation format can also see a rounding
#: boundary flip per token. Measured on the H200: see docs/benchmarks.md (check on the GPU).
MAX_GPU_LOGITS_REL_ERR = 3e-2
#: greedy tokens decoded for the tokens/s figure (after a warm-up generation that builds kernels
#: and captures the CUDA graph)
DECODE_TOKENS = 128


@dataclass
class CheckRow:
    label: str
    stage: str
    bits_per_weight: float
    size_mb: float
    ppl: float | None
    kl: float | None     # reference rows: mean per-token KL(bf16 || quantized)
    top1: float | None   # reference rows: top-1 agreement with bf16
    stderr: float | None  # reference rows: standard error of the ppl change over windows, %
    metric: str          # "ppl vs bf16 %" (reference rows) or "logits vs reference %" (packed rows)
    value: float
    threshold: float
    passed: bool
    seconds: float
    method: str = "rtn"
    decode_tok_s: float | None = None  # GPU rows: greedy decode tokens/s (batch 1, CUDA graphs)


@dataclass
class CheckReport:
    model: str
    tokens: int
    bf16_ppl: float
    rows: list[CheckRow] = field(default_factory=list)
    gpu: str | None = None  # "NVIDIA H200 (sm90)" when the GPU rows ran

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def as_dict(self) -> dict:
        return {"model": self.model, "tokens": self.tokens, "bf16_ppl": self.bf16_ppl, "gpu": self.gpu,
                "passed": self.passed, "rows": [asdict(r) for r in self.rows]}


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e6


def _logits(model, windows: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(w[None]).float() for w in windows])  # fp32 even from a bf16 model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@dataclass
class _GpuContext:
    """What the GPU rows share: the device, its arch and the bf16 model's log-probs there."""

    device: torch.device
    arch: str
    ref: Reference


def _gpu_context(model_dir: Path, windows: torch.Tensor, device: str | torch.device) -> _GpuContext | None:
    dev = resolve_device(device)
    if dev.type != "cuda":
        return None
    ref = Reference(load(model_dir, device=dev, dtype=torch.bfloat16).model, windows.to(dev))
    return _GpuContext(dev, local_arch(dev), ref)


def run_check(model: str | Path | None = None, cases: tuple[CheckCase, ...] = CASES, seq_len: int = 256,
              max_windows: int | None = 64, text: Path | None = None, archs: tuple[str, ...] = PACK_ARCHS,
              logit_windows: int = 4, device: str | torch.device = "auto") -> CheckReport:
    """Every case's rows; ``device`` auto adds the GPU rows when a CUDA GPU is visible."""
    from turbopack.assets import bundled_model_dir

    model_dir = Path(model) if model is not None else bundled_model_dir()
    ref_model = load(model_dir, device="cpu", dtype=torch.float32).model
    windows = windows_of(heldout_ids(model_dir, text, ref_model.config.vocab), seq_len, max_windows)
    ref = Reference(ref_model, windows)
    gpu = _gpu_context(model_dir, windows, device)
    report = CheckReport(str(model_dir), windows.numel(), ref.perplexity,
                         gpu=f"{torch.cuda.get_device_name(gpu.device)} ({gpu.arch})" if gpu else None)
    with tempfile.TemporaryDirectory(prefix="turbopack-check-") as tmp:
        for i, case in enumerate(cases):
            out = Path(tmp) / f"{i}-{case.label.replace(' ', '-')}-{case.method}"
            report.rows += _check_case(model_dir, out, case, ref, archs, windows[:logit_windows], gpu)
    return report


def _check_case(model_dir: Path, out: Path, case: CheckCase, ref: Reference, archs: tuple[str, ...],
                logit_windows: torch.Tensor, gpu: _GpuContext | None) -> list[CheckRow]:
    t0 = time.perf_counter()
    quantize(model_dir, out, case.format, progress=False, **case.quantize_kwargs())
    qmodel = load(out, device="cpu", dtype=torch.float32, backend=Backend.REFERENCE).model
    cmp = compare(qmodel, ref)
    common = {"label": case.label, "method": case.method_name, "bits_per_weight": _bits_per_weight(out)}
    rows = [CheckRow(**common, stage=f"{case.method_name}, reference math", size_mb=_size_mb(out), ppl=cmp.perplexity,
                     kl=cmp.kl, top1=cmp.top1_agreement, stderr=cmp.ppl_change_stderr_pct, metric="ppl vs bf16 %",
                     value=cmp.ppl_change_pct, threshold=case.max_ppl_increase_pct,
                     passed=cmp.ppl_change_pct <= case.max_ppl_increase_pct, seconds=time.perf_counter() - t0)]
    ref_logits = _logits(qmodel, logit_windows)
    fmt = get_format(case.format, **case.params)
    emulated: dict[str, torch.Tensor] = {}
    for arch in archs:
        t0 = time.perf_counter()
        packed = _packed(out, arch)
        loaded = load(packed, device="cpu", dtype=torch.float32)  # the layout's CPU emulator
        emulated[arch] = logits = _logits(loaded.model, logit_windows)
        weights_only = _weights_only_layouts(packed)
        want = ref_logits
        if weights_only and fmt.act_bits < 16:
            # e.g. fp8 on sm80: no FP8 tensor cores, so activations stay 16-bit (W8A16 semantics)
            want = _logits(_dequantized_reference(out), logit_windows)
        err = _rel(logits, want)
        stage = f"packed {arch}, {loaded.backend}" + (", weights-only upcast" if weights_only else "")
        bound = MAX_LOGITS_REL_ERR[16 if weights_only else fmt.act_bits]
        rows.append(CheckRow(**common, stage=f"{case.method_name} {stage}", size_mb=_size_mb(packed), ppl=None, kl=None,
                             top1=None, stderr=None, metric="logits vs reference %", value=100 * err,
                             threshold=100 * bound, passed=err <= bound, seconds=time.perf_counter() - t0))
    if gpu is not None:
        rows += _gpu_rows(out, case, common, logit_windows, gpu, emulated)
    return rows


def _packed(quantized: Path, arch: str) -> Path:
    packed = quantized.with_name(f"{quantized.name}-{arch}")
    if not packed.exists():
        pack(quantized, packed, arch=(arch,), progress=False)
    return packed


def _gpu_rows(out: Path, case: CheckCase, common: dict, logit_windows: torch.Tensor, gpu: _GpuContext,
              emulated: dict[str, torch.Tensor]) -> list[CheckRow]:
    """The case packed for the local arch, through the real kernels with the runtime's defaults."""
    from turbopack.inference.api import load as load_runtime

    t0 = time.perf_counter()
    packed = _packed(out, gpu.arch)
    want = emulated.get(gpu.arch)
    if want is None:
        want = _logits(load(packed, device="cpu", dtype=torch.float32).model, logit_windows)
    net = load(packed, device=gpu.device).model  # bf16, backend cuda: the kernels read the packed bytes
    err = _rel(_logits(net, logit_windows.to(gpu.device)).cpu(), want)
    cmp = compare(net, gpu.ref)
    del net
    runtime = load_runtime(packed, device=gpu.device)  # fused projections, CUDA graphs: `turbopack run`'s path
    prompt = logit_windows[0, :16].tolist()
    runtime.generate_ids([prompt], max_new_tokens=8, stop=False)  # builds kernels, captures the graph
    _, stats = runtime.generate_ids([prompt], max_new_tokens=DECODE_TOKENS, stop=False)
    stage = f"{case.method_name} packed {gpu.arch}, GPU kernels"
    base = {**common, "size_mb": _size_mb(packed), "decode_tok_s": stats.decode_tok_s}
    return [CheckRow(**base, stage=stage, ppl=None, kl=None, top1=None, stderr=None, metric="logits vs emulator %",
                     value=100 * err, threshold=100 * MAX_GPU_LOGITS_REL_ERR, passed=err <= MAX_GPU_LOGITS_REL_ERR,
                     seconds=time.perf_counter() - t0),
            CheckRow(**base, stage=stage, ppl=cmp.perplexity, kl=cmp.kl, top1=cmp.top1_agreement,
                     stderr=cmp.ppl_change_stderr_pct, metric="ppl vs bf16 %", value=cmp.ppl_change_pct,
                     threshold=case.max_ppl_increase_pct, passed=cmp.ppl_change_pct <= case.max_ppl_increase_pct,
                     seconds=0.0)]


def _weights_only_layouts(packed: Path) -> bool:
    import json

    from turbopack.layouts import get_layout

    tensors = json.loads((packed / "turbopack.json").read_text())["tensors"]
    return any(get_layout(t["layout"]).weights_only for t in tensors.values())


def _dequantized_reference(folder: Path):
    """The quantized weights with 16-bit activations: x @ dequantize(W).T (no activation quantization)."""
    return load(folder, device="cpu", dtype=torch.float32, backend=Backend.WEIGHTS_ONLY).model


def _bits_per_weight(folder: Path) -> float:
    import json

    manifest = json.loads((folder / "turbopack.json").read_text())
    nbits = n = 0
    for info in manifest["tensors"].values():
        shape = tuple(info["shape"])
        fmt = format_from_params(info["format"])
        nbits += fmt.bits_per_weight(shape) * shape[0] * shape[1]
        n += shape[0] * shape[1]
    return nbits / max(n, 1)
