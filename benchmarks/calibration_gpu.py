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

Peak memory: the CUDA allocator's peak, or on the CPU turbopack.device.PeakMemory (every storage
torch creates, until freed). ``expected`` is the pipeline's formula (see expected_peak): what must
be alive at the forward pass (hidden states, the float32 block, one chunk's float32 scratch) and at
GPTQ's down_proj (its Hessian and factors); methods add to it (AWQ's search samples, for one).
"""

from __future__ import annotations

import argparse
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

from turbopack.device import PeakMemory, resolve_device  # noqa: E402
from turbopack.packer.calibration import pipeline  # noqa: E402
from turbopack.packer.calibration.data import default_text  # noqa: E402
from turbopack.packer.quantize import quantize  # noqa: E402
from turbopack.packer.synthetic import llama_config, write_synthetic  # noqa: E402

BUNDLED = Path(__file__).resolve().parents[1] / "turbopack" / "assets" / "tiny-llama"
#: (label, format, quantize keyword arguments)
METHODS = {
    "awq": ("w4a16", {"method": "awq", "group_size": 128}),
    "gptq": ("w4a16", {"method": "gptq", "group_size": 128}),
    "gptq-act-order": ("w4a16", {"method": "gptq", "group_size": 128, "act_order": True}),
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


def expected_peak(s: Shape, tokens: int, seqlen: int, forward_tokens: int, hidden_bytes: int, out_buffer: bool,
                  gptq_kk: int) -> dict[str, float]:
    """Bytes alive at the two peaks. Always: the hidden states (``hidden_bytes`` a value) and the
    float32 block. At the forward pass: a separate output buffer if ``out_buffer``, and one chunk's
    float32 scratch (per token: the MLP's gate, up, silu(gate) and product, 4 x intermediate, and
    ~3 x hidden of residual stream). At GPTQ's down_proj: ``gptq_kk`` float32 K x K matrices alive
    at once, plus 3 copies of its W (the float32 clone, the codes, the dequantized W')."""
    chunk = min(tokens, max(1, forward_tokens // seqlen) * seqlen)
    hidden = tokens * s.hidden * hidden_bytes
    base = hidden + F32 * s.layer_params
    forward = hidden * out_buffer + chunk * (4 * s.intermediate + 3 * s.hidden) * F32
    gptq = (gptq_kk * s.intermediate**2 + 3 * s.hidden * s.intermediate) * F32
    return {"hidden_and_block": base, "forward": base + forward, "gptq": base + gptq}


def expected_rows(s: Shape, samples: int, seqlen: int, forward_tokens: int, offload: bool
                  ) -> dict[str, dict[str, float]]:
    """Before issue 10's change (float32 input and output buffers, 8192-token chunks, up to 7 K x K
    alive in GPTQ) and after (one bf16 buffer updated in place, --forward-tokens chunks, 3 K x K;
    ``offload``: that buffer in host memory, pipeline.hidden_home, so none of it on the device)."""
    t = samples * seqlen
    return {"before": expected_peak(s, t, seqlen, 8192, F32, True, 7),
            "after": expected_peak(s, t, seqlen, forward_tokens, 0 if offload else 2, False, 3)}


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
    expected = expected_rows(shape, a.samples, a.seqlen, a.forward_tokens, offload)
    print(json.dumps({k: {n: round(v / 1e9, 3) for n, v in e.items()} for k, e in expected.items()}),
          file=sys.stderr, flush=True)
    rows = [_run(label, src, tmp, text, device, a, shape, block_gb, act_gb, expected["after"])
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
    with PeakMemory(device) as mem:
        quantize(src, tmp / label, fmt, calib=text, calib_samples=a.samples, calib_seqlen=a.seqlen,
                 device=str(device), progress=False, force=True, **kw)
    dt = time.perf_counter() - t0
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


if __name__ == "__main__":
    sys.exit(main())
