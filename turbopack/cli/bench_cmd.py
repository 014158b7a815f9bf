"""`turbopack bench`."""

from __future__ import annotations

from typing import Optional

import typer


def bench(
    formats: str = typer.Option(
        "w4a16,w8a16,w8a8,fp8", "--formats", help="Comma list of w4a16, w8a16, w8a8, fp8, fp8_upcast."
    ),
    model: str = typer.Option(
        "llama3-8b", "--model", help="Whose layer shapes: llama3-8b, qwen3-8b, gemma2-9b, phi4-mini."
    ),
    shapes: str = typer.Option("qkv,o,gate_up,down", "--shapes", help="Comma list of layers: qkv, o, gate_up, down."),
    ms: str = typer.Option("1,4,16,64,256,2048", "--ms", help="Comma list of batch sizes (tokens)."),
    tune: bool = typer.Option(
        False, "--tune", help="Sweep kernel configs and write the winners as <arch>.json to --out."
    ),
    no_peers: bool = typer.Option(
        False, "--no-peers", help="Skip the torch peers (bf16 cuBLAS, tinygemm, _int_mm, _scaled_mm)."
    ),
    out: Optional[str] = typer.Option(
        None, "--out", help="Folder for bench.json (and <arch>.json); default: $OUT or '.'."
    ),
) -> None:
    """Check and time the linear kernels against torch's paths on this GPU; prints a table (µs,
    TB/s, % of measured copy bandwidth, speedups) and the pass/miss of each performance bar.
    Exit 2 without a CUDA device.

    [bold]Examples[/bold]

      turbopack bench --formats w4a16 --shapes gate_up,down --ms 1,16

      turbopack bench --tune --out results/

      turbopack bench --tune --model gemma2-9b --formats w4a16 --ms 1,8,16
    """
    # imported here, not at the top: `turbopack --help` must not pay for torch
    from turbopack.inference.kernels.bench_main import main

    argv = ["--formats", formats, "--model", model, "--shapes", shapes, "--ms", ms]
    argv += ["--tune"] if tune else []
    argv += ["--no-peers"] if no_peers else []
    argv += ["--out", out] if out else []
    rc = main(argv)
    if rc:
        raise typer.Exit(rc)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
