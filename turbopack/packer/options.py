"""Option objects shared by quantize, pack-from-float and calibration.

:class:`FormatSpec` is what to quantize to (the format and its parameters, which linears), built
once from the caller's options; :class:`OutputOptions` is how the output folder is written. They
replace the keyword sprawl that every entry point used to repeat.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from turbopack.checkpoint import Checkpoint
from turbopack.checkpoint.sharded import DEFAULT_SHARD_BYTES
from turbopack.formats import FORMATS, Format, get_format
from turbopack.packer.families import Selection, family_of


@dataclass(frozen=True)
class FormatSpec:
    """A quantization target: format name, its parameters (None: the format's default), which
    linears (``ignore`` globs, ``include_lm_head``), and what to do with layers whose K the int4
    group size does not divide (``k_fallback``)."""

    format: str = "w4a16"
    group_size: int | None = None
    sym: bool | None = None
    scale_dtype: str | None = None
    per_tensor: bool | None = None
    ignore: tuple[str, ...] = ()
    include_lm_head: bool = False
    k_fallback: str | None = None  # layers whose K the group does not divide (turbopack.packer.ragged_k)

    def build(self) -> Format:
        """The Format; parameters the format does not have (e.g. ``group_size`` for fp8) are
        dropped, so one set of CLI options serves every format."""
        own = {f.name for f in fields(FORMATS.get(self.format))}
        params = {"group_size": self.group_size, "sym": self.sym, "scale_dtype": self.scale_dtype,
                  "per_tensor": self.per_tensor}
        return get_format(self.format, **{k: v for k, v in params.items() if k in own})

    def selection(self, ckpt: Checkpoint) -> Selection:
        """Which of ``ckpt``'s tensors are quantized (its family's linears, minus ``ignore``)."""
        family = family_of(ckpt.config, str(ckpt.folder / "config.json"))
        return Selection(family, self.include_lm_head, tuple(self.ignore))


@dataclass(frozen=True)
class OutputOptions:
    """How an output folder is written: ``force`` replaces an existing one, ``max_shard_bytes``
    bounds each safetensors shard, ``progress`` draws a bar on stderr, ``resume`` keeps a failed
    run's partial output and continues it (turbopack.checkpoint.resume)."""

    force: bool = False
    max_shard_bytes: int = DEFAULT_SHARD_BYTES
    progress: bool = True
    resume: bool = False

