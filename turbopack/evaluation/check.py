"""`turbopack check`: the whole path on a model, with numbers and pass/fail.

For every format (RTN): quantize the model into a temp folder and run the reference model with
the quantized weights (the format's own math, incl. W8A8/FP8 activation quantization) on
held-out text; compare perplexity with the unquantized model (threshold: allowed relative
increase). Then pack that folder for each architecture and run the packed bytes through the
CPU emulator of the layout, which reads them as that arch's kernel does; those rows compare
logits with the reference of the same quantized weights (threshold: relative error).
(GPU-kernel rows are future work: issue 4.)
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from turbopack.formats import format_from_params, get_format
from turbopack.inference.loader import load
from turbopack.inference.perplexity import perplexity
from turbopack.packer.pack import pack
from turbopack.packer.quantize import quantize


@dataclass(frozen=True)
class CheckCase:
    label: str
    format: str
    params: dict
    max_ppl_increase_pct: float


# Thresholds (relative perplexity increase over bf16): int8 is near-lossless, e4m3 keeps 3
# mantissa bits, int4 loses most. Measured on the bundled model (64 windows, 2026-11-25):
# w4 asym +0.03%, w4 sym +0.33%, w8a16 -0.00%, w8a8 +0.03%, fp8 +0.07%.
CASES = (
    CheckCase("w4a16 g64 asym", "w4a16", {"group_size": 64}, 2.0),
    CheckCase("w4a16 g64 sym", "w4a16", {"group_size": 64, "sym": True}, 3.0),
    CheckCase("w8a16", "w8a16", {}, 0.5),
    CheckCase("w8a8", "w8a8", {}, 0.5),
    CheckCase("fp8", "fp8", {}, 1.0),
)


#: Packed rows: the same quantized weights through each arch's layout (emulator or kernels) vs
#: the format's reference math. With 16-bit activations the only difference is float32
#: accumulation order (~1e-7); with 8-bit activations an order difference can move a
#: per-token-quantized activation across a rounding boundary in the next layer, one e4m3/int8
#: step, so the bound is looser (measured: fp8 on sm90 9.5e-4).
PACK_ARCHS = ("sm80", "sm90")
MAX_LOGITS_REL_ERR = {16: 1e-3, 8: 1e-2}


@dataclass
class CheckRow:
    label: str
    stage: str
    bits_per_weight: float
    size_mb: float
    ppl: float | None
    metric: str          # "ppl vs bf16 %" (reference rows) or "logits vs reference %" (packed rows)
    value: float
    threshold: float
    passed: bool
    seconds: float


@dataclass
class CheckReport:
    model: str
    tokens: int
    bf16_ppl: float
    rows: list[CheckRow] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def as_dict(self) -> dict:
        return {"model": self.model, "tokens": self.tokens, "bf16_ppl": self.bf16_ppl, "passed": self.passed,
                "rows": [asdict(r) for r in self.rows]}


def heldout_ids(model_dir: Path, text: Path | None = None) -> torch.Tensor:
    """Held-out token ids: the bundled pre-tokenized ids, or ``text`` tokenized with the model's tokenizer."""
    from turbopack.assets import bundled_text

    ids_file = model_dir / "heldout_ids.safetensors"
    if text is None and ids_file.exists():
        from safetensors.torch import load_file

        return load_file(str(ids_file))["input_ids"].long()
    from tokenizers import Tokenizer

    from turbopack.errors import CheckpointError

    tok_file = model_dir / "tokenizer.json"
    if not tok_file.exists():
        raise CheckpointError(f"{model_dir}: no tokenizer.json to tokenize the evaluation text; pass a model with one")
    src = text or bundled_text("heldout.txt")
    return torch.tensor(Tokenizer.from_file(str(tok_file)).encode(Path(src).read_text()).ids, dtype=torch.long)


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e6


def _logits(model, ids: torch.Tensor, seq_len: int, windows: int) -> torch.Tensor:
    n = min(windows, len(ids) // seq_len)
    with torch.inference_mode():
        return torch.cat([model(ids[i * seq_len:(i + 1) * seq_len][None]).float() for i in range(n)])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def run_check(model: str | Path | None = None, cases: tuple[CheckCase, ...] = CASES, seq_len: int = 256,
              max_windows: int | None = 64, text: Path | None = None, archs: tuple[str, ...] = PACK_ARCHS,
              logit_windows: int = 4) -> CheckReport:
    from turbopack.assets import bundled_model_dir

    model_dir = Path(model) if model is not None else bundled_model_dir()
    ids = heldout_ids(model_dir, text)
    ref = load(model_dir, device="cpu", dtype=torch.float32).model
    with torch.inference_mode():
        base = perplexity(ref, ids, seq_len=seq_len, max_windows=max_windows)
    tokens = min(len(ids) // seq_len, max_windows or 10**9) * seq_len
    report = CheckReport(str(model_dir), tokens, base)
    with tempfile.TemporaryDirectory(prefix="turbopack-check-") as tmp:
        for case in cases:
            report.rows += _check_case(model_dir, Path(tmp), case, ids, base, seq_len, max_windows, archs,
                                       min(logit_windows, max_windows or logit_windows))
    return report


def _check_case(model_dir: Path, tmp: Path, case: CheckCase, ids, base: float, seq_len: int,
                max_windows: int | None, archs: tuple[str, ...], logit_windows: int) -> list[CheckRow]:
    t0 = time.perf_counter()
    out = tmp / case.label.replace(" ", "-")
    quantize(model_dir, out, case.format, progress=False, **case.params)
    qmodel = load(out, device="cpu", dtype=torch.float32, backend="reference").model
    with torch.inference_mode():
        ppl = perplexity(qmodel, ids, seq_len=seq_len, max_windows=max_windows)
    inc = 100 * (ppl / base - 1)
    bpw = _bits_per_weight(out)
    rows = [CheckRow(case.label, "rtn, reference math", bpw, _size_mb(out), ppl, "ppl vs bf16 %", inc, case.max_ppl_increase_pct,
                     inc <= case.max_ppl_increase_pct, time.perf_counter() - t0)]
    ref_logits = _logits(qmodel, ids, seq_len, logit_windows)
    for arch in archs:
        t0 = time.perf_counter()
        packed = tmp / f"{out.name}-{arch}"
        pack(out, packed, arch=(arch,), progress=False)
        loaded = load(packed, device="cpu", dtype=torch.float32)  # the layout's CPU emulator
        logits = _logits(loaded.model, ids, seq_len, logit_windows)
        weights_only = _weights_only_layouts(packed)
        want = ref_logits
        if weights_only and get_format(case.format, **case.params).act_bits < 16:
            # e.g. fp8 on sm80: no FP8 tensor cores, so activations stay 16-bit (W8A16 semantics)
            want = _logits(_dequantized_reference(out), ids, seq_len, logit_windows)
        err = _rel(logits, want)
        stage = f"packed {arch}, {loaded.backend}" + (", weights-only upcast" if weights_only else "")
        act_bits = 16 if weights_only else get_format(case.format, **case.params).act_bits
        bound = MAX_LOGITS_REL_ERR[act_bits]
        rows.append(CheckRow(case.label, stage, bpw, _size_mb(packed), None,
                             "logits vs reference %", 100 * err, 100 * bound, err <= bound, time.perf_counter() - t0))
    return rows


def _weights_only_layouts(packed: Path) -> bool:
    import json

    from turbopack.layouts import get_layout

    tensors = json.loads((packed / "turbopack.json").read_text())["tensors"]
    return any(get_layout(t["layout"]).weights_only for t in tensors.values())


def _dequantized_reference(folder: Path):
    """The quantized weights with 16-bit activations: x @ dequantize(W).T (no activation quantization)."""
    from turbopack.inference.qlinear import QuantLinear

    model = load(folder, device="cpu", dtype=torch.float32, backend="reference").model
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m._forward = lambda q, x: torch.nn.functional.linear(x, q.fmt.dequantize(q.tensors()).to(x.dtype), q.bias)
    return model


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
