"""`turbopack inspect`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from turbopack.cli.options import ReportJsonOpt


def inspect(
    path: Path = typer.Argument(
        ..., help="An HF model, quantized or packed folder (or a multi-arch / TP pack output)."
    ),
    as_json: ReportJsonOpt = False,
    layout_diagram: Optional[Path] = typer.Option(
        None, "--layout-diagram", help="Write a PNG of one tile of the folder's layout (needs turbopack[diagram])."
    ),
    arch: str = typer.Option(
        "sm90",
        "--arch",
        help="For --layout-diagram on a quantized (unpacked) folder: draw the layout this arch would get.",
    ),
) -> None:
    """Show what a folder holds: kind, arch, formats, every tensor (shape, dtype/format, layout,
    bytes), totals and the compression ratio against bf16.

    [bold]Examples[/bold]

      turbopack inspect llama-w4-sm90

      turbopack inspect llama-w4 --json

      turbopack inspect llama-w4-sm90 --layout-diagram tile.png
    """
    # imported here, not at the top: `turbopack --help` must not pay for torch
    from turbopack.packer.inspect import diagram_subject
    from turbopack.packer.inspect import inspect as run

    reports = run(path)
    if layout_diagram is not None:
        from turbopack.packer.diagram import draw

        layout, fmt, label = diagram_subject(path, arch)
        draw(layout_diagram, layout, fmt, label)
    if as_json:
        data = [r.as_dict() for r in reports]
        typer.echo(json.dumps(data[0] if len(data) == 1 else {"path": str(path), "folders": data}, indent=2))
    else:
        for r in reports:
            print_report(r)
    if layout_diagram is not None:
        typer.echo(f"layout diagram written to {layout_diagram}")


def print_report(r) -> None:
    # imported here, not at the top: only a table printed to a terminal needs rich's console
    from rich.console import Console
    from rich.table import Table

    where = f", arch {r.arch}" if r.arch else ""
    where += f", tp rank {r.rank}/{r.tp}" if r.tp > 1 else ""
    table = Table(title=f"{r.folder}: {r.kind}{where}; formats: {', '.join(r.formats) or '-'}")
    for col in ("name", "shape", "dtype/format", "layout", "bytes"):
        table.add_column(col, justify="right" if col == "bytes" else "left", no_wrap=col == "name")
    for row in r.rows:
        table.add_row(row["name"], "x".join(map(str, row["shape"])), row["dtype"], row["layout"], f"{row['bytes']:,}")
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 160))
    console.print(table)
    console.print(f"total {r.total_bytes:,} bytes; as bf16 {r.bf16_bytes:,} bytes; compression {r.ratio:.2f}x vs bf16")
    if r.note:
        console.print(r.note)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
