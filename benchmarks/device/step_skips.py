#!/usr/bin/env python3
"""What each piece of the 8B decode step costs on its critical path: the graph step (ms) with one
piece left out (its output replaced by its input or a constant buffer, so the answers are wrong:
a timing, never a check), against the default before and after. The difference is what removing
that piece's launch could save at most: a kernel's own duration in a profile counts the time it
spends waiting under PDL, so it overstates. "no fold" (fastpath.FOLD_NORMS off: add_rmsnorm
between the linears) is the A/B of the fold and the baseline of the pieces left out after it.

    python3 benchmarks/device/step_skips.py [--format w4a16] [--shape llama3-8b] [--batches 1,8]

A device diagnosis beside bench_e2e.py, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from bench_e2e import build_8b  # noqa: E402
from e2e_context import graph_step_ms  # noqa: E402

from turbopack.inference import fastpath  # noqa: E402


class Const(torch.nn.Module):
    """A linear left out: a view of one zero buffer, no launch."""

    def __init__(self, buf: torch.Tensor, n: int):
        super().__init__()
        self.buf, self.n = buf, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        return self.buf[: rows * self.n].view(*x.shape[:-1], self.n)

    def glu(self, h, act):  # noqa: ARG002 - QuantLinear.glu's signature: act(gate) * up, I wide
        rows = h.numel() // h.shape[-1]
        return self.buf[: rows * self.n // 2].view(*h.shape[:-1], self.n // 2)


@contextmanager
def swapped(obj, attr: str, value):
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, old)


@contextmanager
def layers_swapped(model, path: str, make):
    """Each layer's ``path`` (e.g. "self_attn.o_proj") replaced by make(old module)."""
    saved = []
    for layer in model.model.layers:
        parent_name, _, attr = path.rpartition(".")
        parent = layer.get_submodule(parent_name) if parent_name else layer
        old = getattr(parent, attr)
        saved.append((parent, attr, old))
        setattr(parent, attr, make(old))
    try:
        yield
    finally:
        for parent, attr, old in saved:
            setattr(parent, attr, old)


@contextmanager
def both(a, b):
    with a, b:
        yield


def settings(model, buf):
    cfg = model.config
    nh, d = cfg.n_heads, cfg.head_dim

    def no_attention(qkv, cos, sin, pos, cache, n_heads):  # noqa: ARG001 - decode_attention_qkv's signature
        b, t, _ = qkv.shape
        return qkv[..., : nh * d].reshape(b, t, nh, d).transpose(1, 2)

    def const(path):
        return lambda: layers_swapped(model, path, lambda m: Const(buf, m.out_features))

    def off(ctx):  # each piece left out of the step without the fold (its baseline: "no fold")
        return lambda: both(swapped(fastpath, "FOLD_NORMS", False), ctx())

    return {
        "default": lambda: swapped(fastpath, "GLU_DECODE", True),
        "no fold": lambda: swapped(fastpath, "FOLD_NORMS", False),
        "no fold; no add_rmsnorm": off(lambda: swapped(fastpath, "add_rmsnorm", lambda x, r, norm, pre=None: (x, x))),
        "no fold; no attention kernel": off(lambda: swapped(fastpath, "decode_attention_qkv", no_attention)),
        "no fold; no qkv": off(const("self_attn.qkv_proj")),
        "no fold; no o_proj": off(lambda: layers_swapped(model, "self_attn.o_proj", lambda m: torch.nn.Identity())),
        "no fold; no down": off(const("mlp.down_proj")),
        "no fold; no gate_up": off(const("mlp.gate_up_proj")),
        "default again": lambda: swapped(fastpath, "GLU_DECODE", True),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--shape", default="llama3-8b", help="bench_e2e's --shape presets")
    ap.add_argument("--format", default="w4a16", help="bench_e2e's --formats, one")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--only", default="", help="comma-separated setting labels (default: all)")
    args = ap.parse_args()
    model = build_8b(args.format, args.layers, args.shape)
    buf = torch.zeros(8 * 2 * args.prompt * 2 * model.config.intermediate, dtype=torch.bfloat16, device="cuda")
    out: dict[str, float] = {}
    for label, ctx in settings(model, buf).items():
        if args.only and label not in args.only.split(",") and not label.startswith("default"):
            continue
        for b in map(int, args.batches.split(",")):
            with ctx():
                ms = graph_step_ms(model, args.prompt, b)
            key = f"{label} / batch {b}"
            out[key] = ms
            base = out.get(f"{'no fold' if label.startswith('no fold;') else 'default'} / batch {b}", ms)
            print(f"{key:40s} {ms:.4f} ms  {1e3 * (base - ms):+8.1f} µs", flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
