"""`turbopack eval`: perplexity of a model folder or an arch-neutral quantized folder on held-out text.

The quantized folder runs in the reference model with every quantized linear computing its
format's reference math (the runtime loader's "reference" backend: ``Format.linear``, i.e.
dequantized weights plus per-token activation quantization for w8a8/fp8), in float32 on the CPU,
so numbers compare across methods.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer


def heldout_ids(folder: Path, text: Path | None, vocab: int):
    """``text`` tokenized with the folder's tokenizer.json; by default the bundled held-out text
    (its pre-tokenized ids when the folder ships them, as the bundled model does)."""
    import torch

    from turbopack.packer.calibration.data import default_text, tokenize_file

    if text is None and (folder / "heldout_ids.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "heldout_ids.safetensors"))["input_ids"].to(torch.int64)
    return tokenize_file(folder, Path(text) if text is not None else default_text("heldout.txt"), vocab)


def load_for_eval(folder: Path):
    """(model, description): the float model, or the reference model of a quantized folder."""
    import torch

    from turbopack.checkpoint import read_json, read_manifest
    from turbopack.errors import TurbopackError

    if not (folder / "turbopack.json").is_file():
        from turbopack.inference.model import load_model

        return load_model(folder, dtype=torch.float32), "float (source weights, fp32 compute)"
    kind = read_manifest(folder).get("kind")
    if kind != "quantized":
        raise TurbopackError(f"{folder}: a {kind} folder; eval runs the reference model on the arch-neutral folder "
                             f"`turbopack quantize` wrote (before `turbopack pack`)")
    from turbopack.inference.loader import load

    q = read_json(folder / "config.json").get("quantization_config", {})
    extra = f" +smooth(alpha={q['smooth']['alpha']})" if q.get("smooth") else ""
    model = load(folder, device="cpu", dtype=torch.float32, backend="reference").model
    return model, f"{q.get('format', '?')} {q.get('method', 'rtn')}{extra} (reference math)"


def evaluate(model: str | Path, text: Path | None = None, seq_len: int = 256, max_windows: int | None = None,
             against: str | Path | None = None) -> dict:
    """Perplexity of ``model``; with ``against`` (usually the float model it was quantized from) also
    the mean per-token KL(against || model) and top-1 agreement on the same windows."""
    import torch

    from turbopack.checkpoint import resolve_model
    from turbopack.errors import TurbopackError
    from turbopack.inference.perplexity import perplexity

    if seq_len < 2:
        raise TurbopackError(f"--seq-len {seq_len}: need at least 2 tokens per window")
    t0 = time.perf_counter()
    folder = resolve_model(model)
    net, what = load_for_eval(folder)
    ids = heldout_ids(folder, text, net.config.vocab)
    if ids.numel() < 2:
        raise TurbopackError(f"{text or 'held-out text'}: fewer than 2 tokens; pass a longer --text")
    seq_len = min(seq_len, ids.numel())
    windows = ids.numel() // seq_len
    windows = min(windows, max_windows) if max_windows else windows
    res = {"model": str(folder), "weights": what, "seq_len": seq_len, "windows": windows, "tokens": windows * seq_len}
    with torch.inference_mode():
        if against is None:
            res["perplexity"] = perplexity(net, ids, seq_len=seq_len, max_windows=max_windows)
        else:
            ref, _ = load_for_eval(resolve_model(against))
            res.update(_compare(net, ref, ids[: windows * seq_len].view(windows, seq_len)), against=str(against))
    res["seconds"] = round(time.perf_counter() - t0, 2)
    return res


def _compare(net, ref, windows) -> dict:
    """Perplexity of both, mean KL(ref || net) per predicted token, and how often their argmax agree."""
    import math

    import torch

    nll = ref_nll = kl = agree = 0.0
    for w in windows:  # one at a time, as perplexity() does
        lp = torch.log_softmax(net(w[None, :-1])[0].float(), -1)
        lr = torch.log_softmax(ref(w[None, :-1])[0].float(), -1)
        nll -= lp.gather(-1, w[1:, None]).sum().item()
        ref_nll -= lr.gather(-1, w[1:, None]).sum().item()
        kl += (lr.exp() * (lr - lp)).sum().item()
        agree += (lp.argmax(-1) == lr.argmax(-1)).sum().item()
    n = windows.shape[0] * (windows.shape[1] - 1)
    return {"perplexity": math.exp(nll / n), "against_perplexity": math.exp(ref_nll / n), "kl": kl / n, "top1_agreement": agree / n}


def eval_cmd(
    model: str = typer.Argument(..., help="Hugging Face model folder, or a folder written by `turbopack quantize`."),
    text: Optional[Path] = typer.Option(None, "--text", help="Held-out text (UTF-8, or .jsonl with \"text\"); default: bundled heldout.txt."),
    seq_len: int = typer.Option(256, "--seq-len", help="Tokens per window (windows do not overlap)."),
    max_windows: Optional[int] = typer.Option(None, "--max-windows", help="Score at most this many windows."),
    against: Optional[str] = typer.Option(None, "--against", help="Also report KL divergence and top-1 agreement against this model (e.g. the float one)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Perplexity of MODEL (float or quantized) on held-out text, on the CPU.

    [bold]Examples[/bold]

      turbopack eval turbopack/assets/tiny-llama

      turbopack eval tiny-w4-gptq --seq-len 256 --json

      turbopack eval ./Llama-3-8B-w4 --text wiki.test.txt --max-windows 40

      turbopack eval tiny-w4-awq --against turbopack/assets/tiny-llama
    """
    res = evaluate(model, text, seq_len, max_windows, against)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
    else:
        vs = (f"; vs {res['against']}: perplexity {res['against_perplexity']:.4f}, KL {res['kl']:.3e}, "
              f"top-1 agreement {100 * res['top1_agreement']:.2f}%") if against else ""
        typer.echo(f"{res['model']}: perplexity {res['perplexity']:.4f} ({res['weights']}; {res['windows']} x "
                   f"{res['seq_len']} tokens, {res['seconds']} s){vs}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
