"""`turbopack export`."""

from __future__ import annotations

import json
import sys

import typer

from turbopack.cli.options import ForceOpt, JsonOpt, OutOpt


def export(
    src: str = typer.Argument(
        ..., help="Arch-neutral quantized folder (from `turbopack quantize` or `convert`) or Hub id."
    ),
    to: str = typer.Option(..., "--to", help="Target format: compressed-tensors (what vLLM loads)."),
    out: OutOpt = ...,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Export a quantized checkpoint for another engine, with the same weights bit for bit.

    compressed-tensors: w4a16/w8a16 as pack-quantized, w8a8 as int-quantized, fp8 as
    float-quantized; serve it with vLLM, with tensor parallelism across as many GPUs as you like.

    [bold]Examples[/bold]

      turbopack export llama-w4 --to compressed-tensors -o llama-w4-ct

      vllm serve ./llama-w4-ct --tensor-parallel-size 4
    """
    # imported here, not at the top: `turbopack --help` must not pay for torch
    from turbopack.checkpoint.hub import enable_hub
    from turbopack.packer.interop.export import export as run
    from turbopack.packer.interop.hf_load import recipe_for

    enable_hub()
    res = run(src, out, to, force=force, progress=sys.stderr.isatty())
    d = res.as_dict()
    recipe = recipe_for(res.out)
    if as_json:
        typer.echo(json.dumps({**d, "transformers_load": recipe.line(res.out), "plain_load_fails": recipe.plain_fails},
                              indent=2))
        return
    typer.echo(f"{d['out']}: {res.format} as {to}, {d['quantized']} modules, ignore={d['ignore']}; "
               f"{d['output_bytes'] / 1e6:.1f} MB")
    typer.echo(f"load in transformers: {recipe.line(res.out)}")
    if recipe.plain_fails:
        typer.echo(f"  (a plain from_pretrained fails here: {recipe.plain_fails})")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
