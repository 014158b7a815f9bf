"""`turbopack quantize`: a Hugging Face folder in, an arch-neutral quantized folder out.

A dispatcher: the options become a :class:`~turbopack.packer.options.FormatSpec` and
:class:`~turbopack.packer.options.OutputOptions` once, then RTN (streaming, turbopack.packer.rtn)
or a calibrated method (AWQ/GPTQ/SmoothQuant, block by block, turbopack.packer.calibration)
writes the folder; both write the same folder format (turbopack.packer.folder).
"""

from __future__ import annotations

from pathlib import Path

from turbopack.checkpoint.sharded import DEFAULT_SHARD_BYTES
from turbopack.errors import TurbopackError
from turbopack.packer.calibration import CalibOptions, quantize_calibrated
from turbopack.packer.jobs import QuantizeResult
from turbopack.packer.options import FormatSpec, OutputOptions
from turbopack.packer.rtn import quantize_rtn

#: calibration option -> its CLI flag, for the error when RTN is given one
_CALIB_FLAGS = {"calib": "--calib", "samples": "--calib-samples", "seq_len": "--calib-seqlen", "seed": "--seed",
                "alpha": "--alpha", "device": "--device", "act_order": "--act-order",
                "static_groups": "--static-groups", "damp": "--damp", "gptq_block_size": "--gptq-block-size"}


def quantize(model: str | Path, out: str | Path, format: str = "w4a16", *, group_size: int | None = None,
             sym: bool | None = None, scale_dtype: str | None = None, per_tensor: bool | None = None,
             ignore: tuple[str, ...] = (), include_lm_head: bool = False, force: bool = False,
             max_shard_bytes: int = DEFAULT_SHARD_BYTES, progress: bool = True, method: str = "rtn",
             calib: str | Path | None = None, calib_samples: int | None = None, calib_seqlen: int | None = None,
             seed: int | None = None, smooth: bool = False, alpha: float | None = None, device: str | None = None,
             act_order: bool | None = None, resume: bool = False, static_groups: bool | None = None,
             damp: float | None = None, gptq_block_size: int | None = None,
             k_fallback: str | None = None) -> QuantizeResult:
    """Quantize every linear weight of MODEL with RTN into an arch-neutral folder OUT.

    ``method`` awq/gptq (or ``smooth``) calibrate on text instead, block by block, into the same
    folder format: see turbopack.packer.calibration. ``resume`` keeps the partial output of a
    failed run and continues it (RTN only)."""
    spec = FormatSpec(format, group_size, sym, scale_dtype, per_tensor, tuple(ignore), include_lm_head, k_fallback)
    output = OutputOptions(force, max_shard_bytes, progress, resume)
    calib_opts = {"calib": calib, "samples": calib_samples, "seq_len": calib_seqlen, "seed": seed, "alpha": alpha,
                  "device": device, "act_order": act_order, "static_groups": static_groups, "damp": damp,
                  "gptq_block_size": gptq_block_size}
    given = {k: v for k, v in calib_opts.items() if v is not None}
    if method != "rtn" or smooth:
        if k_fallback not in (None, "refuse"):
            raise TurbopackError("--k-fallback works with RTN for now; drop --method/--smooth, or --ignore the layers "
                                 "instead")
        if resume:
            raise TurbopackError("--resume works with RTN only; a calibrated quantize (--method awq/gptq, --smooth) "
                                 "starts over each run: drop --resume")
        return quantize_calibrated(model, out, spec, CalibOptions(method=method, smooth=smooth, **given), output)
    if given:
        raise TurbopackError(f"{_CALIB_FLAGS[next(iter(given))]} is a calibration option and RTN uses none; "
                             f"add --method awq|gptq (or --smooth) or drop it")
    return quantize_rtn(model, out, spec, output)
