"""`turbopack check`: the whole path on a model, with numbers and pass/fail.

For every format (RTN): quantize the model into a temp folder, run the reference model with the
quantized weights (the format's own math, incl. W8A8/FP8 activation quantization) on held-out
text, and compare perplexity with the unquantized model. Thresholds are stated per format as
the allowed relative perplexity increase over bf16.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from turbopack.evaluation.reference import load_reference_quantized
from turbopack.formats import get_format
from turbopack.inference.model import load_model
from turbopack.inference.perplexity import perplexity
from turbopack.packer.quantize import quantize


@dataclass(frozen=True)
class CheckCase:
    label: str
    format: str
    params: dict
    max_ppl_increase_pct: float


# Thresholds: int8 is near-lossless; e4m3 keeps 3 mantissa bits; int4 on a 5M-parameter model
# costs a few percent (larger models lose less).
CASES = (
    CheckCase("w4a16 g64 asym", "w4a16", {"group_size": 64}, 12.0),
    CheckCase("w4a16 g64 sym", "w4a16", {"group_size": 64, "sym": True}, 15.0),
    CheckCase("w8a16", "w8a16", {}, 1.0),
    CheckCase("w8a8", "w8a8", {}, 2.0),
    CheckCase("fp8", "fp8", {}, 3.0),
)


@dataclass
class CheckRow:
    label: str
    stage: str
    bits_per_weight: float
    size_mb: float
    ppl: float
    increase_pct: float
    threshold_pct: float
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


def run_check(model: str | Path | None = None, cases: tuple[CheckCase, ...] = CASES, seq_len: int = 256,
              max_windows: int | None = 64, text: Path | None = None) -> CheckReport:
    from turbopack.assets import bundled_model_dir

    model_dir = Path(model) if model is not None else bundled_model_dir()
    ids = heldout_ids(model_dir, text)
    ref = load_model(model_dir, dtype=torch.float32)
    with torch.inference_mode():
        base = perplexity(ref, ids, seq_len=seq_len, max_windows=max_windows)
    tokens = min(len(ids) // seq_len, max_windows or 10**9) * seq_len
    report = CheckReport(str(model_dir), tokens, base)
    with tempfile.TemporaryDirectory(prefix="turbopack-check-") as tmp:
        for case in cases:
            t0 = time.perf_counter()
            out = Path(tmp) / case.label.replace(" ", "-")
            quantize(model_dir, out, case.format, progress=False, **case.params)
            qmodel = load_reference_quantized(out)
            with torch.inference_mode():
                ppl = perplexity(qmodel, ids, seq_len=seq_len, max_windows=max_windows)
            inc = 100 * (ppl / base - 1)
            fmt = get_format(case.format, **case.params)
            report.rows.append(CheckRow(case.label, "rtn reference", fmt.bits_per_weight((4096, 4096)), _size_mb(out),
                                        ppl, inc, case.max_ppl_increase_pct, inc <= case.max_ppl_increase_pct,
                                        time.perf_counter() - t0))
    return report
