"""Options shared by several commands, declared once (typer reads ``Annotated`` aliases).

A command writes ``as_json: JsonOpt = False`` instead of repeating the flag and its help text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
ReportJsonOpt = Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]
OutOpt = Annotated[Path, typer.Option("-o", "--out", help="Output folder (written atomically).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")]
ResumeOpt = Annotated[bool, typer.Option(
    "--resume", help="Write into .turbopack-partial-OUT (next to OUT), keep it if the run fails or is interrupted, "
                     "and on a rerun with --resume skip the shards already written whose checksums match.")]

# What to quantize to (turbopack.packer.options.FormatSpec): quantize, and pack from a float model
GroupSizeOpt = Annotated[Optional[int], typer.Option(
    "--group-size", "-g", help="int4 group size along K: 32, 64, 128 (default 128).")]
SymOpt = Annotated[Optional[bool], typer.Option(
    "--sym/--asym", help="int4: symmetric (no zero points) or asymmetric (default).")]
ScaleDtypeOpt = Annotated[Optional[str], typer.Option(
    "--scale-dtype", help="int4 scale dtype: bfloat16 (default) or float16.")]
PerTensorOpt = Annotated[Optional[bool], typer.Option(
    "--per-tensor/--per-channel", help="fp8: one scale per tensor instead of per output channel.")]
IgnoreOpt = Annotated[list[str], typer.Option(
    "--ignore", help="Glob of module names to keep unquantized (repeatable).")]
IncludeLmHeadOpt = Annotated[bool, typer.Option(
    "--include-lm-head/--no-include-lm-head", help="Also quantize lm_head.")]
