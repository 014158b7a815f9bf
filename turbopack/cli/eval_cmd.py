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


def evaluate(model: str | Path, text: Path | None = None, seq_len: int = 256, max_windows: int | None = None) -> dict:
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
    with torch.inference_mode():
        ppl = perplexity(net, ids, seq_len=seq_len, max_windows=max_windows)
    windows = ids.numel() // min(seq_len, ids.numel())
    windows = min(windows, max_windows) if max_windows else windows
    return {"model": str(folder), "weights": what, "perplexity": ppl, "seq_len": min(seq_len, ids.numel()),
            "windows": windows, "tokens": windows * min(seq_len, ids.numel()), "seconds": round(time.perf_counter() - t0, 2)}


def eval_cmd(
    model: str = typer.Argument(..., help="Hugging Face model folder, or a folder written by `turbopack quantize`."),
    text: Optional[Path] = typer.Option(None, "--text", help="Held-out text (UTF-8, or .jsonl with \"text\"); default: bundled heldout.txt."),
    seq_len: int = typer.Option(256, "--seq-len", help="Tokens per window (windows do not overlap)."),
    max_windows: Optional[int] = typer.Option(None, "--max-windows", help="Score at most this many windows."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Perplexity of MODEL (float or quantized) on held-out text, on the CPU.

    [bold]Examples[/bold]

      turbopack eval turbopack/assets/tiny-llama

      turbopack eval tiny-w4-gptq --seq-len 256 --json

      turbopack eval ./Llama-3-8B-w4 --text wiki.test.txt --max-windows 40
    """
    res = evaluate(model, text, seq_len, max_windows)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
    else:
        typer.echo(f"{res['model']}: perplexity {res['perplexity']:.4f} ({res['weights']}; {res['windows']} x "
                   f"{res['seq_len']} tokens, {res['seconds']} s)")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
