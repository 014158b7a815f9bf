"""`turbopack check`: a compact verdict per format x method (80 columns, pipe-safe); the detail
behind --verbose or --json."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer


def _short(v: float) -> str:
    return f"{v:.1e}" if abs(v) < 1e-2 or abs(v) >= 1e3 else f"{v:.3g}"


def summary_lines(report) -> list[str]:
    """One line per format x method: the perplexity change that decides (with its limit), the worst
    packed row relative to its limit (emulator or GPU), the GPU decode tokens/s, the verdict."""
    groups: dict[tuple[str, str], list] = {}
    for r in report.rows:
        groups.setdefault((r.label, r.method), []).append(r)
    head = f"{'format':<15}{'method':<12}{'ppl vs bf16':<17}{'packed err %':<18}{'tok/s':>6}  result"
    lines = [head]
    for (label, method), rows in groups.items():
        ppl = rows[0]  # the reference-math row decides quality
        packed = [r for r in rows[1:] if r.metric != "ppl vs bf16 %"]
        worst = max(packed, key=lambda r: r.value / r.threshold) if packed else None
        tok = next((r.decode_tok_s for r in rows if r.decode_tok_s), None)
        ppl_txt = f"{ppl.value:+.2f}% <={ppl.threshold:g}%"
        err_txt = f"{_short(worst.value)} <={_short(worst.threshold)}" if worst else "-"
        ok = "pass" if all(r.passed for r in rows) else "FAIL"
        lines.append(f"{label:<15}{method:<12}{ppl_txt:<17}{err_txt:<18}{(f'{tok:.0f}' if tok else '-'):>6}  {ok}")
    return lines


def _verbose_table(report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"turbopack check — {report.model} ({report.tokens} held-out tokens, bf16 ppl {report.bf16_ppl:.3f})"
    )
    for col in ("format", "stage", "bits/weight", "size MB", "ppl", "KL", "top-1 %", "measure", "value", "threshold",
                "tok/s", "result"):
        table.add_column(col, justify="left" if col in ("format", "stage", "measure") else "right")
    for r in report.rows:
        table.add_row(r.label, r.stage, f"{r.bits_per_weight:.3f}", f"{r.size_mb:.2f}",
                      "" if r.ppl is None else f"{r.ppl:.3f}", "" if r.kl is None else f"{r.kl:.2e}",
                      "" if r.top1 is None else f"{100 * r.top1:.2f}", r.metric,
                      f"{r.value:.1e}" if r.stderr is None else f"{r.value:+.3f} ± {r.stderr:.3f}",
                      f"<= {r.threshold:g}", "" if r.decode_tok_s is None else f"{r.decode_tok_s:.0f}",
                      "[green]pass[/green]" if r.passed else "[red]FAIL[/red]")
    # a pipe has no width: print the table whole rather than cut every cell to an ellipsis
    Console(width=None if sys.stdout.isatty() else 220).print(table)


def check(
    model: Optional[Path] = typer.Argument(None, help="HF model folder (default: the bundled tiny Llama)."),
    text: Optional[Path] = typer.Option(None, "--text", help="Held-out text to evaluate on (default: bundled)."),
    seq_len: int = typer.Option(256, help="Evaluation window length in tokens."),
    max_windows: int = typer.Option(64, help="At most this many windows (0: all)."),
    methods: str = typer.Option(
        "rtn,awq,gptq,smooth",
        "--methods",
        help="Comma-separated methods to check: rtn, awq, gptq, smooth (SmoothQuant); calibrated ones take ~1 min each "
             "on 2 cores.",
    ),
    device: str = typer.Option("auto", "--device", help="auto (GPU rows when a CUDA GPU is visible) | cuda:N | cpu."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Every row: each stage, KL, top-1, sizes, times."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Quantize MODEL in every format and method, pack it for each arch, run it, and compare with bf16.

    One line per format x method: the perplexity change vs bf16 (reference math; it decides
    quality, against the format's limit), the worst packed row against its limit (the packed bytes
    through each arch's CPU emulator vs the reference math; on a GPU also the real kernels vs the
    emulator and their perplexity), and on a GPU the greedy decode tokens/s. Exit code 0 when every
    row passes, 1 otherwise.

    [bold]Examples[/bold]

      turbopack check

      turbopack check --methods rtn

      turbopack check --verbose

      turbopack check ./my-llama --text heldout.txt --json
    """
    from turbopack.evaluation.check import run_check, select_cases

    cases = select_cases(tuple(m.strip() for m in methods.split(",") if m.strip()))
    report = run_check(model, cases, seq_len=seq_len, max_windows=max_windows or None, text=text, device=device)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        if verbose:
            _verbose_table(report)
        typer.echo(f"turbopack check: {report.model}")
        typer.echo(f"{report.tokens} held-out tokens, bf16 perplexity {report.bf16_ppl:.3f}; "
                   + (f"GPU rows on {report.gpu}" if report.gpu else "no GPU: CPU emulator rows only"))
        for line in summary_lines(report):
            typer.echo(line)
        n_ok = sum(all(r.passed for r in report.rows if (r.label, r.method) == k)
                   for k in dict.fromkeys((r.label, r.method) for r in report.rows))
        n = len(dict.fromkeys((r.label, r.method) for r in report.rows))
        typer.echo(f"{'PASS' if report.passed else 'FAIL'}: {n_ok}/{n} format x method cases pass")
    raise typer.Exit(0 if report.passed else 1)


def register(app: typer.Typer) -> None:
    app.command("check")(check)
