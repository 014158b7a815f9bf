"""Calibrated quantization, block by block, into the same folder format RTN writes.

    embed(calibration batch) -> x  (bf16 for a 16-bit model: one buffer, overwritten block by block)
    for each decoder block i:      (only this block's weights and activations are in memory)
        read block i lazily from the shards (float32, on --device)
        [--smooth] SmoothQuant: fold activation scales into the norms / up_proj
        method: rtn | awq | gptq   -> the block's quantized tensors, the block now holds W'
        write block i's tensors (quantized linears, folded norms in place of the originals)
        x = block(x)               (in place, with quantized weights: the next block calibrates on
                                    what it will see; computed in float32, stored in x's dtype)

Output: the same shards/manifest/config.json layout as RTN (:func:`turbopack.packer.rtn.quantize_rtn`;
same tensor names, shapes and dtypes, finished by turbopack.packer.folder), so packing and the
runtime need nothing new; the manifest and ``quantization_config`` record the method, its
parameters, the calibration data and every plain tensor a fold changed.
"""

from __future__ import annotations

import enum
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from turbopack.checkpoint import Checkpoint, ShardedWriter, ShardPlan, atomic_output, check_output, new_manifest
from turbopack.device import resolve_device
from turbopack.errors import TurbopackError
from turbopack.formats import Format, FormatName
from turbopack.inference.model import ModelConfig
from turbopack.packer.calibration.awq import AWQConfig, awq_block
from turbopack.packer.calibration.capture import (
    BlockJob,
    BlockRunner,
    block_config,
    embed,
    hidden_dtype,
    layer_prefix,
    load_block,
)
from turbopack.packer.calibration.data import CalibrationData, calibration_batch
from turbopack.packer.calibration.gptq import GPTQConfig, gptq_block
from turbopack.packer.calibration.smoothquant import SmoothConfig, smooth_block
from turbopack.packer.families import Selection
from turbopack.packer.folder import copy_tensor, quant_config, quantize_tensor, write_folder
from turbopack.packer.jobs import QuantizeResult, peak_rss_mb, plan_jobs
from turbopack.packer.options import FormatSpec, OutputOptions
from turbopack.packer.progress import BlockLines, byte_progress, note
from turbopack.registry import Registry

#: tokens per block forward: bounds the float32 scratch inside a block (an 8B MLP holds ~4 x 14336
#: floats a token: 0.47 GB at 2048 tokens), not the results; 2048 still fills a GPU's GEMMs
FORWARD_TOKENS = 2048


class Method(str, enum.Enum):
    RTN = "rtn"
    AWQ = "awq"
    GPTQ = "gptq"


@dataclass(frozen=True)
class MethodSpec:
    formats: tuple[FormatName, ...]
    config: Callable[[CalibOptions], Any]  # options -> the method's frozen config (has .params())
    run: Callable[[BlockJob, Any], dict[str, dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class _RTNConfig:
    def params(self) -> dict:
        return {}


def rtn_block(job: BlockJob, cfg: _RTNConfig) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for name in sorted(job.quantize):
        lin = job.linear(name)
        out[name] = job.fmt.quantize(lin.weight.cpu())
        lin.weight.copy_(job.fmt.dequantize(out[name]).to(lin.weight.device))
    return out


def gptq_config(o: CalibOptions) -> GPTQConfig:
    """GPTQConfig's defaults (measured: docs/quality.md), overridden by the options given."""
    given = {
        "act_order": o.act_order,
        "static_groups": o.static_groups,
        "percdamp": o.damp,
        "blocksize": o.gptq_block_size,
    }
    return GPTQConfig(**{k: v for k, v in given.items() if v is not None})


METHODS: Registry[MethodSpec] = Registry("quantization method")
METHODS.register(Method.RTN, MethodSpec(tuple(FormatName), lambda o: _RTNConfig(), rtn_block))
METHODS.register(Method.AWQ, MethodSpec((FormatName.W4A16, FormatName.W8A16), lambda o: AWQConfig(), awq_block))
METHODS.register(
    Method.GPTQ, MethodSpec((FormatName.W4A16, FormatName.W8A16, FormatName.W8A8), gptq_config, gptq_block)
)
SMOOTH_FORMATS = (FormatName.W8A8, FormatName.FP8)


@dataclass(frozen=True)
class CalibOptions:
    method: str = "rtn"
    calib: str | Path | None = None
    samples: int = 128
    seq_len: int = 512
    seed: int = 0
    smooth: bool = False
    alpha: float = 0.5
    device: str | None = None
    act_order: bool | None = None  # None: the method's default
    static_groups: bool | None = None
    damp: float | None = None
    gptq_block_size: int | None = None

    def validate(self, fmt: Format) -> MethodSpec:
        spec = METHODS.get(self.method)
        if fmt.name not in spec.formats:
            ok = ", ".join(f.value for f in spec.formats)
            raise TurbopackError(f"--method {self.method} does not support --format {fmt.name.value}; use one of: {ok}")
        if self.smooth and fmt.name not in SMOOTH_FORMATS:
            raise TurbopackError(
                f"--smooth is for formats that quantize activations (w8a8, fp8), not {fmt.name.value}; drop --smooth"
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise TurbopackError(f"--alpha {self.alpha}: must be in [0, 1] (0.5 is the usual choice)")
        gptq_only = {"--act-order": self.act_order, "--static-groups": self.static_groups, "--damp": self.damp,
                     "--gptq-block-size": self.gptq_block_size}
        for flag, value in gptq_only.items():
            if value is not None and self.method != Method.GPTQ:
                raise TurbopackError(f"{flag} applies to --method gptq only; drop it")
        if self.damp is not None and not 0.0 < self.damp <= 1.0:
            raise TurbopackError(f"--damp {self.damp}: must be in (0, 1] (a fraction of the Hessian's mean diagonal)")
        if self.gptq_block_size is not None and self.gptq_block_size < 1:
            raise TurbopackError(f"--gptq-block-size {self.gptq_block_size}: must be >= 1")
        return spec

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)


@dataclass
class _Run:
    """Everything one calibrated quantization needs, resolved and validated before any write."""

    ckpt: Checkpoint
    cfg: ModelConfig
    fmt: Format
    sel: Selection
    opts: CalibOptions
    spec: MethodSpec
    method_cfg: Any
    data: CalibrationData
    device: torch.device
    jobs: list[tuple[str, list]]
    kept: dict[str, str]
    modified: dict[str, str] = field(default_factory=dict)


def quantize_calibrated(model: str | Path, out: str | Path, spec: FormatSpec, opts: CalibOptions,
                        output: OutputOptions = OutputOptions()) -> QuantizeResult:
    """Quantize MODEL with a calibrated method (and/or SmoothQuant) into OUT; see the module doc.
    (``output.resume`` is not used: a calibrated run starts over.)"""
    t0 = time.perf_counter()
    run = _prepare(model, out, spec, opts, output.force, output.progress)
    note(run.data.summary(), output.progress)
    name = f"{run.fmt.describe()} {opts.method}" + (f"+smooth(alpha={opts.alpha})" if opts.smooth else "")
    result = QuantizeResult(out=Path(out), format=name, kept=run.kept, note=run.ckpt.note)
    result.input_bytes = sum(run.ckpt.tensors[n].nbytes for n, _ in run.jobs)
    plan = ShardPlan.build([entries for _, entries in run.jobs], output.max_shard_bytes)
    meta = {"format": run.fmt.name.value, "turbopack": json.dumps(run.fmt.params())}
    label = f"{opts.method} {run.fmt.name.value}"
    with (
        atomic_output(Path(out), output.force) as tmp,
        byte_progress(label, result.input_bytes, output.progress) as (bar, task),
    ):
        writer = ShardedWriter(tmp, plan, meta)
        advance = lambda n: bar.advance(task, n)  # noqa: E731
        _write_outside_layers(run, writer, result, advance)
        lines = BlockLines(opts.method + ("+smooth" if opts.smooth else ""), run.cfg.n_layers, output.progress)
        _calibrate_layers(run, writer, result, lambda d: bar.update(task, description=d), advance, lines.done)
        shards = writer.finish()
        _finish_folder(run, tmp, result, shards, time.perf_counter() - t0)
    result.output_bytes = sum(s["bytes"] for s in shards.values())
    result.seconds = time.perf_counter() - t0
    result.peak_rss_mb = peak_rss_mb()
    result.calibration = run.data.summary()
    return result


def _prepare(model, out, target: FormatSpec, opts: CalibOptions, force: bool, progress: bool = False) -> _Run:
    ckpt = Checkpoint.open(model)
    check_output(Path(out), force, inputs=(ckpt.folder,))
    fmt = target.build()
    sel = target.selection(ckpt)
    spec = opts.validate(fmt)
    cfg = block_config(ckpt)
    if cfg.sliding_window is not None and opts.seq_len > cfg.sliding_window:
        raise TurbopackError(
            f"--calib-seqlen {opts.seq_len} exceeds the model's sliding_window {cfg.sliding_window}; lower it"
        )
    jobs, kept = plan_jobs(ckpt, fmt, sel)
    device = opts.torch_device()
    data = calibration_batch(
        ckpt.folder,
        opts.calib,
        opts.samples,
        opts.seq_len,
        opts.seed,
        vocab=cfg.vocab,
        device=device,
        log=lambda msg: note(msg, progress),
    )
    return _Run(ckpt, cfg, fmt, sel, opts, spec, spec.config(opts), data, device, _layer_order(jobs), kept)


_LAYER = re.compile(r"model\.layers\.(\d+)\.")


def _layer_of(name: str) -> int | None:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else None


def _layer_order(jobs: list[tuple[str, list]]) -> list[tuple[str, list]]:
    """Tensors outside the layers first, then layer by layer: the order blocks are produced in, so
    the shards fill one after another (the writer accepts shards in plan order only)."""
    index = {name: i for i, (name, _) in enumerate(jobs)}
    key = lambda job: (-1 if _layer_of(job[0]) is None else _layer_of(job[0]), index[job[0]])  # noqa: E731
    return sorted(jobs, key=key)


def _write_outside_layers(run: _Run, writer: ShardedWriter, result, advance) -> None:
    for name, _ in run.jobs:
        if _layer_of(name) is not None:
            continue
        if name in run.kept:
            copy_tensor(run.ckpt, name, writer, advance)
        else:  # lm_head with --include-lm-head: no block around it to calibrate on, so RTN
            quantize_tensor(run.ckpt, name, run.fmt, writer, advance)
            result.quantized.append(name)


def hidden_home(device: torch.device) -> torch.device:
    """Where the calibration hidden states live between blocks. On a GPU, pinned host memory: they
    are the largest thing alive (128 x 2048 tokens x 4096 x bf16 = 2.15 GB at the 8B shape, more
    than the block itself), and each block pass streams them through one chunk at a time (16 MB
    each way per 2048-token sequence, ~1 ms at PCIe rates against ~100 ms of compute), so the GPU
    holds one block, one chunk and a method's own state. On the CPU they stay where they are."""
    return torch.device("cpu") if device.type == "cuda" else device


def _calibrate_layers(run: _Run, writer: ShardedWriter, result, describe, advance, done=lambda i: None) -> None:
    cfg = run.cfg
    ids = run.data.ids
    # AWQ searches on whole sequences (it re-runs attention): about search_tokens of them
    keep = -(-getattr(run.method_cfg, "search_tokens", 0) // ids.shape[1])
    runner = BlockRunner(cfg, ids.shape[1], run.device, max(1, FORWARD_TOKENS // ids.shape[1]), min(keep, ids.shape[0]))
    home = hidden_home(run.device)
    x = embed(run.ckpt, ids, home, hidden_dtype(run.ckpt), cfg.embed_scale, pin=home != run.device)  # block i: in, out
    for i in range(cfg.n_layers):
        describe(f"layer {i}/{cfg.n_layers}")
        prefix = layer_prefix(i)
        quantize = frozenset(n[len(prefix):-len(".weight")] for n, _ in run.jobs
                             if n.startswith(prefix) and n not in run.kept)
        block = load_block(run.ckpt, cfg, i, run.device)
        store = run.ckpt.tensors[prefix + "input_layernorm.weight"].dtype
        job = BlockJob(run.sel.family, block, x, runner, run.fmt, quantize, store)
        if run.opts.smooth:
            smooth_block(job, SmoothConfig(alpha=run.opts.alpha))
        qtensors = run.spec.run(job, run.method_cfg)
        _write_block(run, writer, i, job, qtensors, advance)
        result.quantized.extend(prefix + n + ".weight" for n in sorted(qtensors))
        runner.forward(block, x)  # in place: x is now block i + 1's input
        del block, job
        done(i)


def _write_block(run: _Run, writer: ShardedWriter, i: int, job: BlockJob, qtensors, advance) -> None:
    prefix = layer_prefix(i)
    state = job.block.state_dict()
    for name, _ in run.jobs:
        if not name.startswith(prefix):
            continue
        local = name[len(prefix):]
        module = local.removesuffix(".weight")
        if module in qtensors:
            for suffix, t in qtensors[module].items():
                writer.write(f"{prefix}{module}.{suffix}", t)
        elif local in state:
            writer.write(name, state[local].detach().to(device="cpu", dtype=run.ckpt.tensors[name].dtype).contiguous())
        else:  # in the layer but not a block parameter (e.g. an old rotary inv_freq buffer)
            copy_tensor(run.ckpt, name, writer)
        advance(run.ckpt.tensors[name].nbytes)
    run.modified.update({prefix + k: v for k, v in job.modified.items()})


def _method_params(run: _Run) -> dict[str, Any]:
    out = {"method": run.opts.method, "method_params": run.method_cfg.params()}
    if run.opts.smooth:
        out["smooth"] = SmoothConfig(alpha=run.opts.alpha).params()
    return out


def _finish_folder(run: _Run, tmp: Path, result, shards, seconds: float) -> None:
    tensors = {}
    for name, entries in run.jobs:
        if name in run.kept:
            continue
        layer = _layer_of(name) is not None
        tensors[name.removesuffix(".weight")] = {
            "shape": list(run.ckpt.tensors[name].shape),
            "format": run.fmt.params(),
            "tensors": [e.name for e in entries],
            **(_method_params(run) if layer else {"method": "rtn", "method_params": {}}),
        }
    kept = {n: f"{r}; {run.modified[n]}" if n in run.modified else r for n, r in run.kept.items()}
    calibration = {
        **_method_params(run),
        "data": run.data.describe(),
        "device": str(run.device),
        "seconds": round(seconds, 3),
        "model_params": sum(math.prod(e.shape) for e in run.ckpt.tensors.values()),
        "modified": dict(sorted(run.modified.items())),
    }
    manifest = new_manifest("quantized", str(run.ckpt.folder), format=run.fmt.params(), tensors=tensors,
                            unquantized=kept, shards=shards, calibration=calibration)
    qcfg = quant_config(run.fmt, result.kept, run.sel.include_lm_head, **_method_params(run),
                        calibration=run.data.describe())
    write_folder(tmp, run.ckpt.folder, run.ckpt.config, qcfg, manifest)
