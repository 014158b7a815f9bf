"""Quality of a (quantized) model against held-out text and against the float model it came from.

Perplexity alone is a poor judge on a small model: a 4-bit model's perplexity can land a fraction
of a percent *below* the float model's (on the bundled model, symmetric W4 RTN does), which says
nothing about how close the two are. So every comparison also reports, on the same windows:
- the mean per-token KL(float || quantized) of the next-token distributions (0 = identical),
- how often the two argmax tokens agree,
- the perplexity change with its standard error over windows (the per-window NLL differences are
  paired, so the error is that of their mean): a change smaller than ~2 standard errors is noise.
The quantized folder runs in the reference model with each quantized linear computing its format's
reference math (dequantized weights plus per-token activation quantization for w8a8/fp8), in
float32 on the CPU, so numbers compare across methods.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from turbopack.checkpoint import read_json, read_manifest, resolve_model
from turbopack.device import resolve_device
from turbopack.errors import TurbopackError
from turbopack.hfconfig import convert_hint, foreign_quantization
from turbopack.inference.loader import load, load_model
from turbopack.inference.perplexity import perplexity
from turbopack.packer.calibration.data import default_text, tokenize_file


def heldout_ids(folder: Path, text: Path | None = None, vocab: int | None = None) -> torch.Tensor:
    """``text`` tokenized with the folder's tokenizer.json; by default the bundled held-out text
    (its pre-tokenized ids when the folder ships them, as the bundled model does)."""
    if text is None and (folder / "heldout_ids.safetensors").is_file():
        return load_file(str(folder / "heldout_ids.safetensors"))["input_ids"].to(torch.int64)
    return tokenize_file(folder, Path(text) if text is not None else default_text("heldout.txt"), vocab)


def windows_of(ids: torch.Tensor, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """[n, seq_len] non-overlapping windows (tokens after the last full window are dropped)."""
    if seq_len < 2 or ids.numel() < 2:
        raise TurbopackError(f"need at least 2 tokens per window and of text (seq_len {seq_len}, {ids.numel()} tokens)")
    seq_len = min(seq_len, ids.numel())
    n = ids.numel() // seq_len
    n = min(n, max_windows) if max_windows else n
    return ids[: n * seq_len].view(n, seq_len)


#: Reference log-probabilities kept between comparisons (the rest are recomputed per comparison):
#: the bundled model's 117 windows take 245 MB, but 64 windows of a 128k-vocab model take 8 GB.
CACHE_BYTES = 1 << 30


class Reference:
    """The float model's log-probabilities per window, computed once (as far as CACHE_BYTES allows)
    and compared against many."""

    def __init__(self, model: nn.Module, windows: torch.Tensor):
        self.model, self.windows = model, windows
        self._cache: dict[int, torch.Tensor] = {}
        nll = []
        for i, w in enumerate(windows):
            lp = self._compute(w)
            nll.append(-_gather(lp, w))
            if (len(self._cache) + 1) * lp.numel() * lp.element_size() <= CACHE_BYTES:
                self._cache[i] = lp
        self.nll = torch.tensor(nll, dtype=torch.float64)

    def _compute(self, w: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.log_softmax(self.model(w[None, :-1])[0].float(), -1)

    def logp(self, i: int) -> torch.Tensor:
        return self._cache[i] if i in self._cache else self._compute(self.windows[i])

    @property
    def perplexity(self) -> float:
        return math.exp(float(self.nll.sum()) / self.tokens)

    @property
    def tokens(self) -> int:
        return self.windows.shape[0] * (self.windows.shape[1] - 1)


def _gather(logp: torch.Tensor, w: torch.Tensor) -> float:
    return float(logp.gather(-1, w[1:, None]).sum())


@dataclass(frozen=True)
class Comparison:
    perplexity: float
    against_perplexity: float
    ppl_change_pct: float
    ppl_change_stderr_pct: float
    kl: float
    top1_agreement: float

    def as_dict(self) -> dict:
        return asdict(self)


def compare(model: nn.Module, ref: Reference) -> Comparison:
    """``model`` scored on ``ref``'s windows: perplexity, KL(ref || model), top-1 agreement and the
    paired perplexity change vs ``ref`` with its standard error."""
    nll, kl, agree = [], 0.0, 0
    with torch.inference_mode():
        for i, w in enumerate(ref.windows):  # one window at a time: long batches exhaust memory
            lr = ref.logp(i)
            lp = torch.log_softmax(model(w[None, :-1])[0].float(), -1)
            nll.append(-_gather(lp, w))
            kl += float((lr.exp() * (lr - lp)).sum())
            agree += int((lp.argmax(-1) == lr.argmax(-1)).sum())
    n, per_window = ref.tokens, ref.windows.shape[1] - 1
    delta = (torch.tensor(nll, dtype=torch.float64) - ref.nll) / per_window  # mean NLL change per window
    stderr = float(delta.std() / math.sqrt(len(delta))) if len(delta) > 1 else float("nan")
    ppl = math.exp(sum(nll) / n)
    # d(ppl)/ppl = d(mean NLL) for small changes: the NLL error is the relative ppl error
    return Comparison(ppl, ref.perplexity, 100 * (ppl / ref.perplexity - 1), 100 * stderr, kl / n, agree / n)


def load_for_eval(folder: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, str]:
    """(model, description): the float model, or the reference model of a quantized folder, in fp32
    on ``device`` (the reference math is the same on any device; a GPU only makes it faster)."""
    has_manifest = (folder / "turbopack.json").is_file()
    foreign = foreign_quantization(folder, read_manifest(folder).get("kind") if has_manifest else None)
    if foreign is not None:
        raise TurbopackError(convert_hint(folder, foreign, "turbopack eval"))
    if not has_manifest:
        return load_model(folder, dtype=torch.float32, device=device), "float (source weights, fp32 compute)"
    kind = read_manifest(folder).get("kind")
    if kind != "quantized":
        raise TurbopackError(f"{folder}: a {kind} folder; eval runs the reference model on the arch-neutral folder "
                             f"`turbopack quantize` wrote (before `turbopack pack`)")
    q = read_json(folder / "config.json").get("quantization_config", {})
    extra = f" +smooth(alpha={q['smooth']['alpha']})" if q.get("smooth") else ""
    model = load(folder, device=device, dtype=torch.float32, backend="reference").model
    return model, f"{q.get('format', '?')} {q.get('method', 'rtn')}{extra} (reference math)"


def evaluate(model: str | Path, text: Path | None = None, seq_len: int = 256, max_windows: int | None = None,
             against: str | Path | None = None, device: str | torch.device = "auto") -> dict:
    """Perplexity of ``model``; with ``against`` (usually the float model it was quantized from) also
    the KL, top-1 agreement and paired perplexity change of :func:`compare` on the same windows."""
    if seq_len < 2:
        raise TurbopackError(f"--seq-len {seq_len}: need at least 2 tokens per window")
    t0 = time.perf_counter()
    folder = resolve_model(model)
    dev = resolve_device(device)
    net, what = load_for_eval(folder, dev)
    ids = heldout_ids(folder, text, net.config.vocab)
    if ids.numel() < 2:
        raise TurbopackError(f"{text or 'held-out text'}: fewer than 2 tokens; pass a longer --text")
    windows = windows_of(ids, seq_len, max_windows).to(dev)
    res = {
        "model": str(folder),
        "weights": what,
        "device": str(dev),
        "seq_len": windows.shape[1],
        "windows": windows.shape[0],
        "tokens": windows.numel(),
    }
    if against is None:
        with torch.inference_mode():
            res["perplexity"] = perplexity(net, ids, seq_len=seq_len, max_windows=max_windows)
    else:
        ref = Reference(load_for_eval(resolve_model(against), dev)[0], windows)
        res.update(compare(net, ref).as_dict(), against=str(against))
    res["seconds"] = round(time.perf_counter() - t0, 2)
    return res
