"""What a quantize run plans and reports, whatever its method: the jobs (every source tensor and
the output tensors it becomes, planned from headers) and the result.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turbopack.checkpoint import Checkpoint, TensorEntry
from turbopack.formats import Format
from turbopack.packer.families import Selection, check_dims

Jobs = list[tuple[str, list[TensorEntry]]]


@dataclass
class QuantizeResult:
    out: Path
    format: str
    quantized: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)
    input_bytes: int = 0
    output_bytes: int = 0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    formats: dict[str, Format] = field(default_factory=dict)  # per-module format where --k-fallback chose another
    calibration: str | None = None  # what a calibrated run was calibrated on (its summary line)
    note: str | None = None  # what the source's view left out (a multimodal model's vision tower)

    def as_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out), "format": self.format, "quantized": len(self.quantized),
            "kept": len(self.kept), "input_bytes": self.input_bytes, "output_bytes": self.output_bytes,
            "seconds": round(self.seconds, 3), "mb_per_s": round(self.input_bytes / 1e6 / max(self.seconds, 1e-9), 1),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            **({"calibration": self.calibration} if self.calibration else {}),
            **({"note": self.note} if self.note else {}),
        }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def quantized_names(weight_name: str, fmt: Format, shape: tuple[int, int]) -> list[TensorEntry]:
    prefix = weight_name.removesuffix(".weight")
    return [TensorEntry(f"{prefix}.{s.suffix}", s.dtype, s.shape) for s in fmt.specs(shape)]


def plan_jobs(ckpt: Checkpoint, fmt: Format, sel: Selection,
              formats: dict[str, Format] | None = None) -> tuple[Jobs, dict[str, str]]:
    """[(source tensor, its output entries)] in file order, and {kept tensor: reason}. Validates
    every shape before anything is written, so a bad shape fails in seconds, not hours.
    ``formats``: per-tensor formats that replace ``fmt`` (from turbopack.packer.ragged_k)."""
    formats = formats or {}
    check_dims(ckpt.config, {n: e.shape for n, e in ckpt.tensors.items()}, str(ckpt.folder / "config.json"),
               {n: p.name for n, p in ckpt.location.items()})
    jobs, kept = [], {}
    for name, entry in ckpt.tensors.items():
        reason = sel.reason_skipped(name, len(entry.shape))
        if reason is None:
            f = formats.get(name, fmt)
            f.check_shape(f"{ckpt.location[name].name}:{name}", entry.shape)
            jobs.append((name, quantized_names(name, f, entry.shape)))
        else:
            kept[name] = reason
            jobs.append((name, [entry]))
    return jobs, kept
