"""`turbopack quantize`."""

from __future__ import annotations

import json
from typing import Optional

import typer

from turbopack.cli.options import (
    ForceOpt,
    GroupSizeOpt,
    IgnoreOpt,
    IncludeLmHeadOpt,
    JsonOpt,
    OutOpt,
    PerTensorOpt,
    ResumeOpt,
    ScaleDtypeOpt,
    SymOpt,
)


def quantize(
    model: str = typer.Argument(..., help="Hugging Face model folder (config.json + *.safetensors)."),
    out: OutOpt = ...,
    format: str = typer.Option("w4a16", "--format", "-f", help="w4a16 | w8a16 | w8a8 | fp8 | nvfp4"),
    group_size: GroupSizeOpt = None,
    sym: SymOpt = None,
    scale_dtype: ScaleDtypeOpt = None,
    per_tensor: PerTensorOpt = None,
    ignore: IgnoreOpt = (),
    k_fallback: Optional[str] = typer.Option(
        None,
        "--k-fallback",
        help="int4 layers whose K the group size does not divide: refuse (default) | group (the largest smaller "
        "group that divides K, those layers only) | w8 (those layers as w8a16). RTN only.",
    ),
    include_lm_head: IncludeLmHeadOpt = False,
    method: str = typer.Option(
        "rtn", "--method", "-m", help="rtn (no data) | awq (w4a16, w8a16) | gptq (w4a16, w8a16, w8a8)."
    ),
    calib: Optional[str] = typer.Option(
        None,
        "--calib",
        help='Calibration data: FILE (text, or .jsonl with "text" or chat "messages" per line), '
        "self (text the model generates itself, offline), bundled[:NAME], or hf[:DATASET[:SPLIT[:COLUMN]]] "
        "(Hub, needs `datasets`; hf alone: pile-val, or ultrachat for chat models). Default: the source the "
        "model's config.json declares (the bundled model: bundled:train, its training text), else self.",
    ),
    calib_samples: Optional[int] = typer.Option(None, "--calib-samples", help="Calibration windows (default 128)."),
    calib_seqlen: Optional[int] = typer.Option(
        None, "--calib-seqlen", help="Tokens per calibration window (default 512)."
    ),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for choosing calibration windows (default 0)."),
    smooth: bool = typer.Option(False, "--smooth", help="SmoothQuant before quantizing (w8a8, fp8)."),
    alpha: Optional[float] = typer.Option(
        None, "--alpha", help="SmoothQuant migration strength in [0, 1] (default 0.5)."
    ),
    act_order: Optional[bool] = typer.Option(
        None,
        "--act-order/--no-act-order",
        help="GPTQ: quantize columns by decreasing activation energy, with static groups "
        "(default: on, measured in docs/quality.md).",
    ),
    static_groups: Optional[bool] = typer.Option(
        None,
        "--static-groups/--no-static-groups",
        help="GPTQ without act-order: take each group's scale from the original weights "
        "(default: off; act-order implies it).",
    ),
    damp: Optional[float] = typer.Option(
        None, "--damp", help="GPTQ: Hessian damping as a fraction of its mean diagonal (default 0.01)."
    ),
    gptq_block_size: Optional[int] = typer.Option(
        None, "--gptq-block-size", help="GPTQ: columns per lazy-update block; speed only, same result (default 128)."
    ),
    device: Optional[str] = typer.Option(
        None, "--device", help="Calibration device: cuda (default when present) or cpu."
    ),
    force: ForceOpt = False,
    resume: ResumeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Quantize every linear weight of MODEL (RTN, or AWQ/GPTQ/SmoothQuant on calibration text) into an
    arch-neutral checkpoint.

    [bold]Examples[/bold]

      turbopack quantize ./Llama-3-8B -o llama-w4 --format w4a16 --group-size 128

      turbopack quantize ./Qwen2-7B -o qwen-fp8 --format fp8 --ignore 'model.layers.0.*'

      turbopack quantize ./Llama-3-8B -o llama-w4-gptq -f w4a16 -g 128 --method gptq --calib my.jsonl

      turbopack quantize ./Llama-3-8B -o llama-w8a8-sq -f w8a8 --smooth --alpha 0.5

      turbopack quantize ./Llama-3-70B -o llama70-w4 -f w4a16 --resume   # after a crash: the same line again

      turbopack quantize ./model -o w4 -f w4a16 -g 64 --k-fallback w8   # down_proj K=688: no int4 group divides it

    --resume is for RTN; a calibrated run (--method awq/gptq, --smooth) starts over.
    """
    # imported here, not at the top: `turbopack --help` must not pay for torch
    from turbopack.checkpoint.resume import interrupt_keeps_partial
    from turbopack.packer.quantize import quantize as run

    with interrupt_keeps_partial(out, resume):
        res = run(model, out, format, group_size=group_size, sym=sym, scale_dtype=scale_dtype, per_tensor=per_tensor,
                  ignore=tuple(ignore), include_lm_head=include_lm_head, force=force, method=method, calib=calib,
                  calib_samples=calib_samples, calib_seqlen=calib_seqlen, seed=seed, smooth=smooth, alpha=alpha,
                  device=device, act_order=act_order, resume=resume, static_groups=static_groups, damp=damp,
                  gptq_block_size=gptq_block_size, k_fallback=k_fallback)
    d = res.as_dict()
    if as_json:
        typer.echo(json.dumps(d, indent=2))
    else:
        typer.echo(f"{d['out']}: {res.format}, {d['quantized']} tensors quantized, {d['kept']} kept; "
                   f"{d['input_bytes'] / 1e6:.1f} MB -> {d['output_bytes'] / 1e6:.1f} MB in {d['seconds']} s "
                   f"({d['mb_per_s']} MB/s, peak RSS {d['peak_rss_mb']} MB)")
        for line in (res.calibration, res.note):
            if line:
                typer.echo(f"  {line}")


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize)
