"""`turbopack check`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def check(
    model: Optional[Path] = typer.Argument(None, help="HF model folder (default: the bundled tiny Llama)."),
    text: Optional[Path] = typer.Option(None, "--text", help="Held-out text to evaluate on (default: bundled)."),
    seq_len: int = typer.Option(256, help="Evaluation window length in tokens."),
    max_windows: int = typer.Option(64, help="At most this many windows (0: all)."),
    methods: str = typer.Option("rtn,awq,gptq,smooth", "--methods",
                                help="Comma-separated methods to check: rtn, awq, gptq, smooth (SmoothQuant); calibrated ones take ~1 min each on 2 cores."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Quantize MODEL in every format and method, pack it for each arch, run it, and compare with bf16.

    Reference rows: perplexity change vs bf16 (pass/fail against the format's threshold), KL
    divergence and top-1 agreement. Packed rows: the packed bytes through the layout's CPU
    emulator vs the reference math of the same weights. Exit code 0 when every row passes, 1
    otherwise.

    [bold]Examples[/bold]

      turbopack check

      turbopack check --methods rtn

      turbopack check ./my-llama --text heldout.txt --json
    """
    from rich.console import Console
    from rich.table import Table

    from turbopack.evaluation.check import run_check, select_cases

    cases = select_cases(tuple(m.strip() for m in methods.split(",") if m.strip()))
    report = run_check(model, cases, seq_len=seq_len, max_windows=max_windows or None, text=text)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        table = Table(title=f"turbopack check — {report.model} ({report.tokens} held-out tokens, bf16 ppl {report.bf16_ppl:.3f})")
        for col in ("format", "stage", "bits/weight", "size MB", "ppl", "KL", "top-1 %", "measure", "value", "threshold", "result"):
            table.add_column(col, justify="left" if col in ("format", "stage", "measure") else "right")
        for r in report.rows:
            table.add_row(r.label, r.stage, f"{r.bits_per_weight:.3f}", f"{r.size_mb:.2f}",
                          "" if r.ppl is None else f"{r.ppl:.3f}", "" if r.kl is None else f"{r.kl:.2e}",
                          "" if r.top1 is None else f"{100 * r.top1:.2f}", r.metric,
                          f"{r.value:.1e}" if r.stderr is None else f"{r.value:+.3f} ± {r.stderr:.3f}", f"<= {r.threshold:g}",
                          "[green]pass[/green]" if r.passed else "[red]FAIL[/red]")
        Console().print(table)
        typer.echo("PASS" if report.passed else "FAIL")
    raise typer.Exit(0 if report.passed else 1)


def register(app: typer.Typer) -> None:
    app.command("check")(check)
