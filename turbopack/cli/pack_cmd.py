"""`turbopack pack`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from turbopack.cli.options import (
    ForceOpt,
    GroupSizeOpt,
    IgnoreOpt,
    IncludeLmHeadOpt,
    PerTensorOpt,
    ResumeOpt,
    ScaleDtypeOpt,
    SymOpt,
)


def pack(
    src: str = typer.Argument(
        ..., help="Quantized folder (from `turbopack quantize`), or an HF model folder with --format."
    ),
    out: Path = typer.Option(
        ...,
        "-o",
        "--out",
        help="Output folder (written atomically). With several --arch: one subfolder per arch, OUT/sm80, OUT/sm90.",
    ),
    arch: list[str] = typer.Option(
        ["sm90"], "--arch", "-a",
        help="GPU architecture to pack for (repeatable): sm80, sm86, sm89, sm90, sm100, sm120, ...",
    ),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel ranks: one subfolder rank0, rank1, ... per rank."),
    explain: bool = typer.Option(
        False, "--explain", help="Print, per tensor, the layout, padding, kernel config and why it was chosen."
    ),
    format: Optional[str] = typer.Option(
        None,
        "--format",
        "-f",
        help="SRC is unquantized: quantize it (RTN) in this format while packing: w4a16 | w8a16 | w8a8 | fp8.",
    ),
    group_size: GroupSizeOpt = None,
    sym: SymOpt = None,
    scale_dtype: ScaleDtypeOpt = None,
    per_tensor: PerTensorOpt = None,
    ignore: IgnoreOpt = (),
    include_lm_head: IncludeLmHeadOpt = False,
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Refuse a format an arch cannot run natively (fp8 on sm80/sm86 runs upcast to 16-bit) instead of packing "
             "it upcast.",
    ),
    force: ForceOpt = False,
    resume: ResumeOpt = False,
    as_json: bool = typer.Option(False, "--json", help="Print the result (and the --explain table) as JSON."),
) -> None:
    """Pack a quantized checkpoint for one or more GPU architectures (and TP ranks).

    One --arch writes OUT itself; several write one folder per arch: OUT/sm80, OUT/sm90, ...

    --tp N writes one folder per rank: OUT/rank0, OUT/rank1, ... (OUT/sm90/rank0 with several archs).

    TP split: q/k/v/gate/up by output rows (q by heads, k/v by kv heads), o/down by input columns;
    embeddings, norms and lm_head replicated.

    [bold]Examples[/bold]

      turbopack pack llama-w4 --arch sm90 -o llama-w4-sm90 --explain

      turbopack pack llama-w4 --arch sm80 --arch sm90 -o llama-w4-packed --tp 2

      turbopack pack ./Llama-3-8B --format w4a16 --group-size 128 --arch sm90 -o llama-sm90

      turbopack pack llama70-w4 --arch sm90 -o llama70-sm90 --resume   # after a crash: the same line again

    With --format, the format options (--group-size, --sym, --scale-dtype, --per-tensor, --ignore,
    --include-lm-head) are those of `turbopack quantize`.
    """
    # imported here, not at the top: `turbopack --help` must not pay for torch
    from turbopack.checkpoint.resume import interrupt_keeps_partial
    from turbopack.packer.pack import pack as run

    with interrupt_keeps_partial(out, resume):
        res = run(src, out, tuple(arch), tp, format, group_size=group_size, sym=sym, scale_dtype=scale_dtype,
                  per_tensor=per_tensor, ignore=tuple(ignore), include_lm_head=include_lm_head,
                  explain=explain or as_json, force=force, progress=sys.stderr.isatty(), strict=strict, resume=resume)
    for note in res.notes:
        typer.echo(f"note: {note}", err=True)
    if as_json:
        typer.echo(json.dumps(res.as_dict(), indent=2))
        return
    if explain:
        print_explain(res.explain)
    d = res.as_dict()
    typer.echo(f"{d['out']}: {d['modules']} modules packed for {', '.join(res.archs)} (tp={res.tp}) into "
               f"{len(res.folders)} folder(s), {d['plain']} plain tensors copied; {d['output_bytes'] / 1e6:.1f} MB "
               f"in {d['seconds']} s")


def print_explain(rows: list[dict]) -> None:
    # imported here, not at the top: only a table printed to a terminal needs rich's console
    from rich.console import Console
    from rich.table import Table

    archs, ranks = len({r["arch"] for r in rows}) > 1, len({r["rank"] for r in rows}) > 1
    extra = (("arch",) if archs else ()) + (("rank",) if ranks else ())
    table = Table(title="layout per tensor", show_lines=False)
    for col in ("module", *extra, "shape", "format", "layout", "padding", "kernel", "why"):
        table.add_column(col, overflow="fold", no_wrap=col == "module")
    for r in rows:
        pad = r["padding"]
        pad_s = (
            f"n {pad['n']}→{pad['n_pad']}, k {pad['k']}→{pad['k_pad']}"
            if isinstance(pad, dict) and "n_pad" in pad
            else str(pad)
        )
        kernel = kernel_summary(r["kernel"])
        cells = (r["module"], *(str(r[c]) for c in extra), "x".join(map(str, r["shape"])), r["format"],
                 r["layout"], pad_s, kernel, r["why"])
        table.add_row(*cells)
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 240))
    console.print(table)


def kernel_summary(kernel: dict) -> str:
    """What dispatch runs per batch-size bucket (the tuned table's entries), one line each."""
    from turbopack.inference.kernels.table import describe, plan_from_json  # pure JSON reading; no torch at --help

    return describe(plan_from_json(kernel, "pack --explain")).replace("; ", "\n")


def register(app: typer.Typer) -> None:
    app.command("pack")(pack)
