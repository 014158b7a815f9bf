"""`turbopack convert`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from turbopack.cli.options import ForceOpt, JsonOpt


def convert(
    src: str = typer.Argument(
        ...,
        help="Quantized checkpoint folder or Hub id (org/name[@revision]): AutoAWQ gemm, GPTQ, or compressed-tensors.",
    ),
    out: Path = typer.Option(
        ..., "-o", "--out", help="Output folder: turbopack's arch-neutral quantized form (written atomically)."
    ),
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Import an existing quantized checkpoint into turbopack's arch-neutral form, bit-exact.

    AWQ gemm -> w4a16 (asym, fp16 scales); GPTQ 4-bit -> w4a16, 8-bit per-channel sym -> w8a16;
    compressed-tensors pack-quantized int4 -> w4a16, int8 -> w8a16/w8a8, float-quantized -> fp8.
    Anything with no exact equivalent (act-order g_idx that scatters a group, per-group int8,
    GPTQ v1 zero 16) is refused with the reason. `turbopack pack` takes OUT like our own output.

    [bold]Examples[/bold]

      turbopack convert ./Llama-3-8B-AWQ -o llama-w4

      turbopack convert TheOrg/Qwen2-7B-GPTQ-Int4@main -o qwen-w4 && turbopack pack qwen-w4 --arch sm90 -o qwen-sm90
    """
    # imported here, not at the top: `turbopack --help` must not pay for torch
    from turbopack.checkpoint.hub import enable_hub
    from turbopack.packer.interop.convert import convert as run

    enable_hub()
    res = run(src, out, force=force, progress=sys.stderr.isatty())
    d = res.as_dict()
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    typer.echo(f"{d['out']}: {d['from']} -> {res.format}, {d['quantized']} modules converted exactly, {d['kept']} kept"
               + (f", {len(d['dropped'])} activation scales dropped" if d["dropped"] else "")
               + f"; {d['output_bytes'] / 1e6:.1f} MB in {d['seconds']} s")


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
