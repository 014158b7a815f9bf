"""`turbopack eval`: perplexity of a model folder or an arch-neutral quantized folder on held-out
text (turbopack.evaluation.metrics does the work)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from turbopack.cli.options import JsonOpt


def eval_cmd(
    model: str = typer.Argument(..., help="Hugging Face model folder, or a folder written by `turbopack quantize`."),
    text: Optional[Path] = typer.Option(
        None, "--text", help='Held-out text (UTF-8, or .jsonl with "text"); default: bundled heldout.txt.'
    ),
    seq_len: int = typer.Option(256, "--seq-len", help="Tokens per window (windows do not overlap)."),
    max_windows: Optional[int] = typer.Option(None, "--max-windows", help="Score at most this many windows."),
    against: Optional[str] = typer.Option(
        None, "--against", help="Also report KL divergence and top-1 agreement against this model (e.g. the float one)."
    ),
    device: str = typer.Option(
        "auto", "--device", help="auto | cuda | cuda:N | cpu (the fp32 reference math runs there)."
    ),
    as_json: JsonOpt = False,
) -> None:
    """Perplexity of MODEL (float or quantized) on held-out text (fp32 reference math; on the GPU
    when there is one).

    [bold]Examples[/bold]

      turbopack eval turbopack/assets/tiny-llama

      turbopack eval tiny-w4-gptq --seq-len 256 --json

      turbopack eval ./Llama-3-8B-w4 --text wiki.test.txt --max-windows 40

      turbopack eval tiny-w4-awq --against turbopack/assets/tiny-llama
    """
    # imported here, not at the top: `turbopack --help` must not pay for torch
    from turbopack.evaluation.metrics import evaluate

    res = evaluate(model, text, seq_len, max_windows, against, device)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
    else:
        vs = (f"; vs {res['against']}: perplexity {res['against_perplexity']:.4f} "
              f"({res['ppl_change_pct']:+.3f}% +- {res['ppl_change_stderr_pct']:.3f}%), KL {res['kl']:.3e}, "
              f"top-1 agreement {100 * res['top1_agreement']:.2f}%") if against else ""
        typer.echo(f"{res['model']}: perplexity {res['perplexity']:.4f} ({res['weights']}; {res['windows']} x "
                   f"{res['seq_len']} tokens, {res['device']}, {res['seconds']} s){vs}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
