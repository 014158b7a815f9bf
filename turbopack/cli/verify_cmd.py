"""`turbopack verify`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from turbopack.cli.options import ReportJsonOpt


def verify(
    path: Path = typer.Argument(
        ...,
        help="A `turbopack pack` output (its <arch>/ and rank<r>/ subfolders are all checked), or a quantized folder.",
    ),
    against: Optional[Path] = typer.Option(
        None, "--against", help="The quantized folder it was packed from: unpack every module and compare bit for bit."
    ),
    as_json: ReportJsonOpt = False,
) -> None:
    """Check a packed folder: shard sha256 and sizes, every tensor's dtype and shape, and with
    --against that every module unpacks to exactly the quantized source. Exit 1 if a check fails.

    [bold]Examples[/bold]

      turbopack verify llama-w4-sm90

      turbopack verify llama-w4-packed --against llama-w4 --json
    """
    # imported here, not at the top: `turbopack --help` must not pay for torch
    from turbopack.packer.verify import verify as run

    report = run(path, against)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for f in report.folders:
            if f.problems:
                for problem in f.problems:
                    typer.echo(f"FAIL {problem}")
            else:
                extra = f", {f.compared} modules/tensors bit-identical to {against}" if against else ""
                typer.echo(
                    f"ok   {f.folder}: {f.shards} shard(s) match their sha256, {f.tensors} tensors as listed{extra}"
                )
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
