#!/usr/bin/env python3
"""Calibration at Llama-3-8B shapes: time per method, extrapolated to minutes per billion parameters,
and peak memory against one decoder block plus its activations (issue 10's bars: <= 2 min per B
params per method on the H200; peak <= 2 x block + activations), next to the expected peak.

A synthetic checkpoint with the 8B model's layer shapes (hidden 4096, intermediate 14336, 32 heads,
8 KV heads) and ``--layers`` of its 32 layers is calibrated block by block as `turbopack quantize`
does it, on ``--samples`` x ``--seqlen`` tokens of text (the bundled training text, repeated to
reach the length: the timing does not depend on what the text says). The pipeline holds one block
at a time, so time and memory per block carry over to all 32 layers.

    python3 benchmarks/calibration_gpu.py --layers 2 --out $OUT                 # on the GPU
    python3 benchmarks/calibration_gpu.py --device cpu --hidden 512 --intermediate 1792 --heads 8 \
        --kv-heads 2 --samples 32 --seqlen 256 --forward-tokens 256 --layers 1   # the CPU check
    python3 benchmarks/calibration_gpu.py --layers 1 --methods gptq --breakdown  # what is alive at the peak

Peak memory: the CUDA allocator's peak, or on the CPU turbopack.device.PeakMemory (every storage
torch creates, until freed). ``expected`` is the pipeline's formula (see expected_peak): what must
be alive at the forward pass (hidden states, the float32 block, one chunk's float32 scratch) and at
GPTQ's down_proj (its Hessian while it is taken, then its factorization); methods add to it (AWQ's
search samples, for one). ``--breakdown`` (CUDA) lists the allocations alive at each method's peak,
grouped by the innermost turbopack frame that made them (turbopack.device.PeakBreakdown).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbopack.device import PeakBreakdown, PeakMemory, resolve_device  # noqa: E402
from turbopack.packer.calibration import pipeline  # noqa: E402
from turbopack.packer.calibration.data import default_text  # noqa: E402
from turbopack.packer.quantize import quantize  # noqa: E402
from turbopack.packer.synthetic import llama_config, write_synthetic  # noqa: E402

BUNDLED = Path(__file__).resolve().parents[1] / "turbopack" / "assets" / "tiny-llama"
#: (label, format, quantize keyword arguments)
METHODS = {
    "awq": ("w4a16", {"method": "awq", "group_size": 128}),
    "gptq": ("w4a16", {"method": "gptq", "group_size": 128}),  # act-order: GPTQ's default
    "gptq-no-act-order": ("w4a16", {"method": "gptq", "group_size": 128, "act_order": False}),
    "smoothquant": ("w8a8", {"smooth": True}),
}
F32 = 4


@dataclass(frozen=True)
class Shape:
    hidden: int = 4096
    intermediate: int = 14336
    heads: int = 32
    kv_heads: int = 8

    @property
    def layer_params(self) -> int:  # q, k, v, o + gate, up, down
        kv = self.hidden // self.heads * self.kv_heads
        return self.hidden * (2 * self.hidden + 2 * kv) + 3 * self.hidden * self.intermediate


def expected_peak(s: Shape, tokens: int, seqlen: int, forward_tokens: int, hidden_bytes: int, parked: bool
                  ) -> dict[str, float]:
    """Bytes alive on the device at each of the pipeline's peaks, from the shapes (B = 4 bytes).

    * hidden_and_block: the hidden states (``hidden_bytes`` a value; 0 when they live in host
      memory, pipeline.hidden_home) and the float32 block (4P);
    * forward: + one chunk's float32 scratch (per token: the MLP's gate, up, act(gate) and
      product, 4I, and ~3H of residual stream);
    * gptq_capture: the forward up to down_proj's input with its Hessian I x I accumulating;
    * gptq_factor: down_proj's factorization: its ordered Hessian and cuSOLVER's clone of it
      (2 I x I; on the CPU the clone is the retry backup instead) and its working weight H x I,
      beside the block unless it is ``parked`` in host memory (gptq_block on a GPU).
    """
    chunk = min(tokens, max(1, forward_tokens // seqlen) * seqlen)
    base = tokens * s.hidden * hidden_bytes + F32 * s.layer_params
    scratch = chunk * (4 * s.intermediate + 3 * s.hidden) * F32
    factor = (2 * s.intermediate**2 + s.hidden * s.intermediate) * F32
    capture = base + s.intermediate**2 * F32 + scratch
    factor += tokens * s.hidden * hidden_bytes if parked else base
    return {"hidden_and_block": base, "forward": base + scratch, "gptq_capture": capture, "gptq_factor": factor,
            "gptq": max(capture, factor)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--device", default="auto", help="auto | cuda | cpu (the CPU: a scaled-down shape)")
    ap.add_argument("--hidden", type=int, default=Shape.hidden)
    ap.add_argument("--intermediate", type=int, default=Shape.intermediate)
    ap.add_argument("--heads", type=int, default=Shape.heads)
    ap.add_argument("--kv-heads", type=int, default=Shape.kv_heads)
    ap.add_argument("--vocab", type=int, default=32000, help="small on the CPU: the embedding is host memory on a GPU")
    ap.add_argument("--forward-tokens", type=int, default=pipeline.FORWARD_TOKENS,
                    help="tokens per block forward (the pipeline's FORWARD_TOKENS); scale it with the shape")
    ap.add_argument("--breakdown", action="store_true",
                    help="CUDA: also record the allocator's history and print the blocks alive at each method's "
                         "peak (slower: the times are then not the bar's)")
    ap.add_argument("--top", type=int, default=12, help="--breakdown: rows per method")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    a = ap.parse_args()
    device = resolve_device(a.device)
    shape = Shape(a.hidden, a.intermediate, a.heads, a.kv_heads)
    pipeline.FORWARD_TOKENS = a.forward_tokens
    tmp = Path(tempfile.mkdtemp(prefix="tp-calib-"))
    src = write_synthetic(tmp / "src", llama_config(a.hidden, a.intermediate, a.layers, a.heads, a.kv_heads,
                                                    vocab=a.vocab))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if (BUNDLED / f).is_file():
            shutil.copy(BUNDLED / f, src / f)
    text = tmp / "calib.txt"
    words = default_text().read_text()
    text.write_text(words * max(2, -(-a.samples * a.seqlen * 8 // len(words))))  # a token is < 8 characters
    block_gb = shape.layer_params * 2 / 1e9
    act_gb = a.samples * a.seqlen * a.hidden * 2 / 1e9  # one block's input hidden states, bf16
    offload = pipeline.hidden_home(device) != device
    expected = expected_peak(shape, a.samples * a.seqlen, a.seqlen, a.forward_tokens, 0 if offload else 2,
                             device.type == "cuda")
    print(json.dumps({n: round(v / 1e9, 3) for n, v in expected.items()}), file=sys.stderr, flush=True)
    rows = [_run(label, src, tmp, text, device, a, shape, block_gb, act_gb, expected)
            for label in a.methods.split(",")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "calibration_gpu.json").write_text(json.dumps(
        {"device": name, "samples": a.samples, "seqlen": a.seqlen, "shape": vars(a), "expected_gb": expected,
         "rows": rows}, indent=1, default=str))
    print(f"{name}: {a.samples} x {a.seqlen} tokens, {a.layers} layers of hidden {a.hidden}, intermediate "
          f"{a.intermediate}; chunks of {a.forward_tokens} tokens")
    print("| method | s for the layers | min per B params | whole 8B, min | peak GB | expected GB | bar GB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['seconds']} | {r['min_per_b_params']} | {r['whole_8b_min']} | {r['peak_gb']} | "
              f"{r['expected_gb']} | {r['peak_bar_gb']} |")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _run(label: str, src: Path, tmp: Path, text: Path, device: torch.device, a, shape: Shape, block_gb: float,
         act_gb: float, expected: dict[str, float]) -> dict:
    fmt, kw = METHODS[label]
    t0 = time.perf_counter()
    trace = PeakBreakdown(device) if a.breakdown and device.type == "cuda" else contextlib.nullcontext()
    with PeakMemory(device) as mem, trace:
        quantize(src, tmp / label, fmt, calib=text, calib_samples=a.samples, calib_seqlen=a.seqlen,
                 device=str(device), progress=False, force=True, **kw)
    dt = time.perf_counter() - t0
    if isinstance(trace, PeakBreakdown):
        _print_breakdown(label, trace, a.top)
    min_per_b = dt / 60 / (a.layers * shape.layer_params / 1e9)
    kind = "gptq" if label.startswith("gptq") else "forward"
    whole_8b = min_per_b * 32 * Shape().layer_params / 1e9
    row = {"method": label, "format": fmt, "seconds": round(dt, 1), "layers": a.layers,
           "min_per_b_params": round(min_per_b, 3), "whole_8b_min": round(whole_8b, 1),
           "peak_gb": round(mem.peak / 1e9, 3), "expected_gb": round(expected[kind] / 1e9, 3),
           "block_gb": round(block_gb, 3), "acts_gb": round(act_gb, 3), "peak_bar_gb": round(2 * block_gb + act_gb, 3)}
    print(json.dumps(row), file=sys.stderr, flush=True)
    shutil.rmtree(tmp / label, ignore_errors=True)
    return row


def _print_breakdown(label: str, trace: PeakBreakdown, top: int) -> None:
    """The blocks alive at the peak, grouped by where they were made, largest groups first."""
    groups: dict[str, list[int]] = {}
    for b in trace.blocks:
        groups.setdefault(b.where, []).append(b.bytes)
    print(f"\n{label}: {trace.peak / 1e9:.3f} GB alive at the peak (replayed history), {len(trace.blocks)} blocks")
    print("| GB | blocks | largest MB | made at |\n|---:|---:|---:|---|")
    for where, sizes in sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:top]:
        print(f"| {sum(sizes) / 1e9:.3f} | {len(sizes)} | {max(sizes) / 1e6:.1f} | {where} |")


if __name__ == "__main__":
    sys.exit(main())
