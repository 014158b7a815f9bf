#!/usr/bin/env python3
"""Calibration on the GPU at Llama-3-8B shapes: time per method, extrapolated to minutes per billion
parameters, and peak GPU memory against one decoder block plus its activations (issue 10's bars:
<= 2 min per B params per method on the H200; peak <= 2 x block + activations).

A synthetic checkpoint with the 8B model's layer shapes (hidden 4096, intermediate 14336, 32 heads,
8 KV heads) and ``--layers`` of its 32 layers is calibrated block by block as `turbopack quantize`
does it, on ``--samples`` x ``--seqlen`` tokens of text (the bundled training text, repeated to
reach the length: the timing does not depend on what the text says). The pipeline holds one block
at a time, so time and memory per block carry over to all 32 layers.

    python3 benchmarks/calibration_gpu.py --layers 2 --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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
LAYER_PARAMS_8B = 4096 * (4096 + 2 * 1024 + 4096) + 3 * 4096 * 14336  # q, k, v, o + gate, up, down
PARAMS_8B = 32 * LAYER_PARAMS_8B


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tp-calib-"))
    src = write_synthetic(tmp / "src", llama_config(4096, 14336, a.layers, 32, 8, vocab=32000))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if (BUNDLED / f).is_file():
            shutil.copy(BUNDLED / f, src / f)
    text = tmp / "calib.txt"
    text.write_text(default_text().read_text() * 2)
    block_gb = LAYER_PARAMS_8B * 2 / 1e9
    act_gb = a.samples * a.seqlen * 4096 * 2 / 1e9  # one block's input hidden states, bf16
    rows = []
    for label in a.methods.split(","):
        fmt, kw = METHODS[label]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        quantize(src, tmp / label, fmt, calib=text, calib_samples=a.samples, calib_seqlen=a.seqlen, device="cuda",
                 progress=False, force=True, **kw)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 1e9
        min_per_b = dt / 60 / (a.layers * LAYER_PARAMS_8B / 1e9)
        rows.append({"method": label, "format": fmt, "seconds": round(dt, 1), "layers": a.layers,
                     "min_per_b_params": round(min_per_b, 3), "whole_8b_min": round(min_per_b * PARAMS_8B / 1e9, 1),
                     "peak_gpu_gb": round(peak, 2), "block_gb": round(block_gb, 2), "acts_gb": round(act_gb, 2),
                     "peak_bar_gb": round(2 * block_gb + act_gb, 2)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        shutil.rmtree(tmp / label, ignore_errors=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "calibration_gpu.json").write_text(
        json.dumps(
            {"device": torch.cuda.get_device_name(0), "samples": a.samples, "seqlen": a.seqlen, "rows": rows}, indent=1
        )
    )
    print(
        f"{torch.cuda.get_device_name(0)}: {a.samples} x {a.seqlen} tokens, {a.layers} of 32 Llama-3-8B-shaped layers"
    )
    print("| method | s for the layers | min per B params | whole 8B, min | peak GPU GB | bar GB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['seconds']} | {r['min_per_b_params']} | {r['whole_8b_min']} | {r['peak_gpu_gb']} | "
            f"{r['peak_bar_gb']} |"
        )
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
