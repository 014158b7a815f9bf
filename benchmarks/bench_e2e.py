#!/usr/bin/env python3
"""End-to-end runtime benchmark and checks on a GPU (not a test; run it on the device).

  --bundled  the bundled tiny Llama in every format through the runtime (packed at load for this
             GPU): greedy tokens vs the bf16 model's over the first 32, W4 perplexity vs bf16,
             int8/int4 KV agreement.
  --e2e      a Llama-3-8B-shaped model with random weights built on the GPU (packed tensors filled
             with random codes; no 8B files): batch-1 decode tokens/s, bf16 vs W4A16, against the
             weight-bandwidth bound (weight bytes / measured copy bandwidth); and decode at 4k
             context with bf16 / int8 / int4 KV. --shape qwen3-8b | gemma2-9b | phi4-mini: that
             family's shape instead (SHAPES), with its reference-forward step beside the fast path's.

Prints a table and writes JSON + a markdown section to --out (default $OUT or .).

    python benchmarks/bench_e2e.py --bundled --e2e
    python benchmarks/bench_e2e.py --e2e --shape qwen3-8b --formats bf16,w4a16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# the script's folder is on sys.path (python benchmarks/bench_e2e.py)
from e2e_context import (  # noqa: E402
    FUSIONS,
    attention_micro,
    best_attention_config,
    fusion_ab,
    graph_step_ms,
    kernel_profile,
    long_context,
    prefill_ms,
    time_graph,
)

from turbopack.inference import model as M  # noqa: E402
from turbopack.inference.api import fuse_model, load  # noqa: E402
from turbopack.inference.config import Activation, NormStyle  # noqa: E402
from turbopack.inference.generate import Engine  # noqa: E402
from turbopack.inference.kernels import pdl  # noqa: E402
from turbopack.inference.kernels.graph_capture import capture  # noqa: E402
from turbopack.inference.qlinear import QuantLinear  # noqa: E402

LLAMA3_8B = M.ModelConfig(vocab=128256, hidden=4096, intermediate=14336, n_layers=32, n_heads=32, n_kv_heads=8,
                          head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=8192)
#: --shape: the configs measured, each a family's differences on the fast path (Qwen3-8B: per-head
#: q/k norms; Gemma-2-9B: Gemma and sandwich norms, GeGLU, heads of 256, soft-caps, every other
#: layer windowed; Phi-4-mini: fused projections in the files, 96 of 128 channels rotated)
SHAPES = {"llama3-8b": LLAMA3_8B,
          "qwen3-8b": M.ModelConfig(vocab=151936, hidden=4096, intermediate=12288, n_layers=36, n_heads=32,
                                    n_kv_heads=8, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6,
                                    max_position_embeddings=40960, qk_norm=True),
          "gemma2-9b": M.ModelConfig(vocab=256000, hidden=3584, intermediate=14336, n_layers=42, n_heads=16,
                                     n_kv_heads=8, head_dim=256, rms_norm_eps=1e-6, max_position_embeddings=8192,
                                     tie_word_embeddings=True, norm=NormStyle.GEMMA,
                                     activation=Activation.GELU_TANH, sandwich_norms=True,
                                     embed_scale=3584 ** 0.5, attn_scale=256 ** -0.5, attn_softcap=50.0,
                                     final_softcap=30.0, layer_windows=(4096, None) * 21),
          "phi4-mini": M.ModelConfig(vocab=200064, hidden=3072, intermediate=8192, n_layers=32, n_heads=24,
                                     n_kv_heads=8, head_dim=128, rms_norm_eps=1e-5, max_position_embeddings=131072,
                                     tie_word_embeddings=True, rotary_dim=96, fused_projections=True)}
FORMATS = ("bf16", "w4a16", "w8a16", "fp8", "w8a8")  # --e2e's models, bf16 first (the speed-ups' base)
BATCHES = (1, 8, 32)
PROMPTS = ["ROMEO:\n", "First Citizen:\nBefore we proceed any further,", "To be, or not to be"]


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def copy_bandwidth() -> float:
    """Bytes/s of a 2 GiB device-to-device copy, counting bytes read plus written."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    ms = time_graph(lambda: dst.copy_(src), iters=20)
    return 2 * src.numel() / (ms / 1e3)


# --- the bundled model -------------------------------------------------------------------------


def bundled(asset: Path, n_tokens: int = 32) -> dict:
    from safetensors.torch import load_file

    from turbopack.inference.perplexity import perplexity
    from turbopack.packer.quantize import quantize

    out: dict = {"formats": {}}
    ids = load_file(str(asset / "heldout_ids.safetensors"))["input_ids"].long()
    ref = load(asset, device="cuda")
    ref_tokens = [ref.generate(p, n_tokens, stop=False).token_ids for p in PROMPTS]
    ref_ppl = perplexity(ref.model, ids, seq_len=256, max_windows=32)
    out["bf16"] = {"ppl": ref_ppl, "text": ref.generate(PROMPTS[0], n_tokens, stop=False).text}
    for kv in ("int8", "int4"):
        m = load(asset, device="cuda", kv=kv)
        toks = [m.generate(p, n_tokens, stop=False).token_ids for p in PROMPTS]
        out[f"kv_{kv}"] = {"same_tokens": _agree(toks, ref_tokens)}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, params in (("w8a16", {}), ("w8a8", {}), ("fp8", {}), ("w4a16", {"group_size": 64})):
            folder = Path(tmp) / fmt
            quantize(asset, folder, fmt, progress=False, **params)
            m = load(folder, device="cuda")
            gens = [m.generate(p, n_tokens, stop=False) for p in PROMPTS]
            toks = [g.token_ids for g in gens]
            ppl = perplexity(m.model, ids, seq_len=256, max_windows=32)
            out["formats"][fmt] = {"backend": m.loaded.backend, "layouts": m.loaded.info["layouts"],
                                   "identical_greedy": toks == ref_tokens, "same_tokens": _agree(toks, ref_tokens),
                                   "ppl": ppl, "ppl_increase_pct": 100 * (ppl / ref_ppl - 1),
                                   "decode_tok_s": gens[-1].stats.decode_tok_s, "text": gens[0].text}
            log(fmt, out["formats"][fmt])
    return out


def _agree(a: list[list[int]], b: list[list[int]]) -> str:
    same = sum(x == y for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    return f"{same}/{sum(len(r) for r in b)}"


# --- the 8B-shaped model -----------------------------------------------------------------------


def random_packed(layout, fmt, shape, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Packed tensors with random codes (any bit pattern is a valid code) and small scales."""
    out = {}
    for s in layout.packed_specs(fmt, shape):
        if s.dtype.is_floating_point and s.dtype.itemsize >= 2:
            out[s.suffix] = (torch.rand(s.shape, generator=g, device="cuda") * 0.002 + 0.001).to(s.dtype)
            if s.suffix != "scales":  # zero terms: centre the codes
                out[s.suffix] = (-8 * out[s.suffix].float()).to(s.dtype)
        else:
            nbytes = s.nbytes
            raw = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=g, device="cuda")
            if s.dtype == torch.float8_e4m3fn:
                raw = raw & 0x77  # finite, |x| < 2 (no NaN codes)
            out[s.suffix] = raw.view(s.dtype).reshape(s.shape)
    return out


def build_8b(fmt_name: str | None, layers: int, shape: str = "llama3-8b") -> M.Transformer:
    """An 8B shape (SHAPES) with random weights, built on the GPU; fused q|k|v and gate|up."""
    cfg = replace(SHAPES[shape], n_layers=layers)
    g = torch.Generator(device="cuda").manual_seed(0)
    if fmt_name is None:
        model = M.build_model(cfg, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.02, generator=g) if p.dim() > 1 else p.fill_(1.0)
        fuse_model(model)
        return model
    from turbopack.formats import get_format
    from turbopack.layouts import get_layout, select

    fmt_name, _, head = fmt_name.partition("+")  # "w4a16+head": lm_head too, as quantize --include-lm-head
    fmt = get_format(fmt_name)
    model = M.build_model(cfg, device="meta", dtype=torch.bfloat16)
    h, i = cfg.hidden, cfg.intermediate
    qkv = ((cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim, h)
    linears = [(model, "lm_head", (cfg.vocab, h), ())] if head else []
    for layer in model.model.layers:
        linears += [(layer.self_attn, "qkv_proj", qkv, ("q_proj", "k_proj", "v_proj")),
                    (layer.self_attn, "o_proj", (h, cfg.n_heads * cfg.head_dim), ()),
                    (layer.mlp, "gate_up_proj", (2 * i, h), ("gate_proj", "up_proj")),
                    (layer.mlp, "down_proj", (h, i), ())]
    for parent, attr, shape, drop in linears:
        layout = get_layout(select(fmt, "sm90", shape).layout)
        setattr(parent, attr, QuantLinear.from_tensors(fmt, shape, random_packed(layout, fmt, shape, g),
                                                       layout=layout, backend="cuda"))
        for d in drop:
            if hasattr(parent, d):  # absent where the files hold the fused one (Phi)
                delattr(parent, d)
    for name, p in list(model.named_parameters()):
        t = torch.empty(p.shape, device="cuda", dtype=torch.bfloat16)
        t.normal_(0, 0.02, generator=g) if p.dim() > 1 else t.fill_(1.0)
        parent, _, attr = name.rpartition(".")
        model.get_submodule(parent)._parameters[attr] = torch.nn.Parameter(t, requires_grad=False)
    if cfg.tie_word_embeddings and not head:  # named_parameters() listed the shared weight once, as the embedding
        model.lm_head.weight = model.model.embed_tokens.weight
    model.setup_rope(min(cfg.max_position_embeddings, M.ROPE_TABLE_LEN))
    return model.eval()


def weight_bytes(model: M.Transformer) -> int:
    """Bytes a decode step must read: every linear's weight tensors (embedding: one row only)."""
    total = 0
    for mod in model.modules():
        if isinstance(mod, QuantLinear):
            total += sum(t.numel() * t.element_size() for t in mod.tensors().values())
        elif isinstance(mod, torch.nn.Linear):
            total += mod.weight.numel() * mod.weight.element_size()
    return total


def linears_only_ms(model: M.Transformer) -> float:
    """One token through every linear, back to back, in a CUDA graph (the matmuls' share)."""
    mods = [m for m in model.modules() if isinstance(m, (QuantLinear, torch.nn.Linear))]
    xs = {m.in_features: torch.randn(1, m.in_features, device="cuda", dtype=torch.bfloat16) for m in mods}

    def run():
        for m in mods:
            m(xs[m.in_features])

    run()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with capture(g):
        run()
    return time_graph(g.replay, iters=20)


def decode_bench(model: M.Transformer, kv: str, prompt: int, new: int) -> dict:
    eng = Engine(model, kv=kv)
    ids = torch.randint(0, 1000, (1, prompt))
    eng.generate(ids, 8)  # compile, capture
    _, st = eng.generate(ids, new)
    step_ms = time_graph(eng._graph.graph.replay, iters=50)
    out = {
        "decode_tok_s": st.decode_tok_s,
        "prefill_tok_s": st.prefill_tok_s,
        "graph_step_ms": step_ms,
        "fast": eng.fast,
    }
    try:
        out["kernels"] = kernel_profile(eng._graph.graph.replay)
    except Exception as e:  # the profile is a diagnosis, not a result
        out["kernels"] = [[f"profile failed: {type(e).__name__}: {e}", 0, 0]]
    del eng
    model.kv_caches = None
    return out


def pdl_ab(model: M.Transformer, prompt: int) -> dict:
    """The batch-1 graph step (ms) with programmatic dependent launch off, on, and on for one side
    only (the CUDA decode kernels or the Triton glue), captured anew each way (kernels/pdl.py: a
    graph keeps the launch attributes it was captured with); and the linears alone, back to back,
    off and on."""
    from turbopack.inference.kernels import cuda_build

    out, before = {}, os.environ.get(pdl.ENV)
    try:
        for name, flag in (("off", "0"), ("on", "1"), ("cuda_only", "cuda"), ("triton_only", "triton"),
                           ("no_linears", "glue")):
            os.environ[pdl.ENV] = flag
            cuda_build.refresh_pdl()
            out[name] = graph_step_ms(model, prompt)
            if flag in ("0", "1"):
                out[f"linears_{name}"] = linears_only_ms(model)
    finally:
        if before is None:
            os.environ.pop(pdl.ENV, None)
        else:
            os.environ[pdl.ENV] = before
        cuda_build.refresh_pdl()
    out["on_supported"] = pdl.enabled(torch.device("cuda")) and pdl.triton_ok()
    return out


def reference_step_ms(model: M.Transformer, prompt: int) -> float:
    """The batch-1 graph step through the reference forward (Transformer.forward), not the fast path."""
    eng = Engine(model, kv="bf16", fast=False)
    eng.generate(torch.randint(0, 1000, (1, prompt)), 8)
    ms = time_graph(eng._graph.graph.replay, iters=50)
    del eng
    model.kv_caches = None
    return ms


def e2e(layers: int, prompt: int, new: int, formats: tuple[str, ...] = FORMATS, shape: str = "llama3-8b",
        quick: bool = False, ab: bool = False) -> dict:
    """The models' decode (quick: batch-1 decode and, off Llama, the reference forward's step only;
    no attention sweep, PDL A/B, batches, prefill, fusion A/B or long-context KV; ab: the W4A16
    fusion A/B all the same)."""
    bw = copy_bandwidth()
    res: dict = {"copy_bw_tb_s": bw / 1e12, "layers": layers, "shape": shape}
    from turbopack.inference.kernels import attention as A

    if not quick:
        res["attention_micro"] = attention_micro()
        bn, nw, ns, fast = best_attention_config(res["attention_micro"])
        res["attention_config"] = {"block_n": bn, "num_warps": nw, "num_stages": ns, "fast_dequant": fast}
        A.BLOCK_N, A.FAST_DEQUANT, A.NUM_WARPS, A.NUM_STAGES = bn, fast, nw, ns
        log("attention config", res["attention_config"])
    for name in formats:
        t0 = time.perf_counter()
        model = build_8b(None if name == "bf16" else name, layers, shape)
        log(f"built {name} in {time.perf_counter() - t0:.1f} s")
        wb = weight_bytes(model)
        r = {"weight_gb": wb / 1e9, "bound_tok_s": bw / wb, "linears_only_ms": linears_only_ms(model)}
        r.update(decode_bench(model, "bf16", prompt, new))
        r["pct_of_bound"] = 100 * r["decode_tok_s"] / r["bound_tok_s"]
        r["graph_pct_of_bound"] = 100 * (1e3 / r["graph_step_ms"]) / r["bound_tok_s"]
        if shape != "llama3-8b":  # what the fast path gains over the reference forward on this family
            r["reference_step_ms"] = reference_step_ms(model, prompt)
        if not quick:
            r["pdl_step_ms"] = pdl_ab(model, prompt)
            r["batch_tok_s"] = {b: long_context(model, "bf16", ctx=prompt, batch=b)["tok_s"] for b in BATCHES}
            r["prefill_2048_ms"] = prefill_ms(model, 2048)
        if name == "w4a16" and (ab or not quick):
            r["fusion_ab"] = fusion_ab(model, prompt)
        if name == "w4a16" and not quick:
            r["kv_4k"] = {kv: long_context(model, kv) for kv in ("bf16", "int8", "int4")}
            r["kv_16k_b8"] = {kv: long_context(model, kv, ctx=16384, batch=8) for kv in ("bf16", "int8", "int4")}
        res[name] = r
        log(name, json.dumps(r))
        del model
        torch.cuda.empty_cache()
    res["speedup"] = {n: res[n]["decode_tok_s"] / res["bf16"]["decode_tok_s"] for n in formats if "bf16" in res}
    return res


def markdown(res: dict, cmd: str) -> str:
    dev = torch.cuda.get_device_name(0)
    import datetime

    lines = [f"## Runtime end to end (bench_e2e.py) — {datetime.date.today().isoformat()}, {dev}", "",
             f"Command: `{cmd}`", ""]
    if "e2e" in res:
        e = res["e2e"]
        lines += [
            f"{e.get('shape', 'llama3-8b')} shape ({e['layers']} layers), random weights built on the GPU, batch 1, "
            f"copy bandwidth {e['copy_bw_tb_s']:.2f} TB/s (read+write). Bound = copy bandwidth / weight bytes.",
            "",
            "| model | weight GB | decode tok/s | vs bf16 | graph step ms | linears only ms | bound tok/s | % of bound "
            "| batch 8 tok/s | batch 32 tok/s | prefill 2048 ms |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name in [n for n in FORMATS if n in e]:
            r = e[name]
            bt = {int(k): f"{v:.0f}" for k, v in r.get("batch_tok_s", {}).items()}
            vs = e["speedup"].get(name, float("nan"))
            pre = f"{r['prefill_2048_ms']:.1f}" if "prefill_2048_ms" in r else "-"
            lines.append(f"| {name} | {r['weight_gb']:.2f} | {r['decode_tok_s']:.1f} | {vs:.2f}x | "
                         f"{r['graph_step_ms']:.3f} | {r['linears_only_ms']:.3f} | {r['bound_tok_s']:.1f} | "
                         f"{r['pct_of_bound']:.1f} | {bt.get(8, '-')} | {bt.get(32, '-')} | {pre} |")
        for name in [n for n in FORMATS if "reference_step_ms" in e.get(n, {})]:
            r = e[name]
            lines.append(f"- {name}: graph step {r['graph_step_ms']:.3f} ms on the fast path, "
                         f"{r['reference_step_ms']:.3f} ms through the reference forward")
        if "w4a16" in e and "w4a16" in e["speedup"]:
            lines += ["", f"W4A16 / bf16 decode: **{e['speedup']['w4a16']:.2f}x** (bar 2.8x); W4A16 at "
                      f"**{e['w4a16']['pct_of_bound']:.1f}%** of its bound (bar 70%).", ""]
        pdl_rows = [(n, e[n]["pdl_step_ms"]) for n in FORMATS if n in e and "pdl_step_ms" in e[n]]
        if pdl_rows:
            lines += ["Programmatic dependent launch (kernels/pdl.py), batch-1 graph step captured each way (ms):",
                      "", "| model | off | on | off / on | CUDA kernels only | glue only | no Triton linears "
                      "| linears alone, off | on |", "|---|---|---|---|---|---|---|---|---|"]
            lines += [f"| {n} | {r['off']:.3f} | {r['on']:.3f} | {r['off'] / r['on']:.3f}x | {r['cuda_only']:.3f} | "
                      f"{r['triton_only']:.3f} | {r['no_linears']:.3f} | {r['linears_off']:.3f} | "
                      f"{r['linears_on']:.3f} |"
                      for n, r in pdl_rows]
            lines.append("")
        if "fusion_ab" in e.get("w4a16", {}):
            ab = e["w4a16"]["fusion_ab"]
            lines += ["W4A16 decode step (ms) with the launch-saving fusions (fastpath) off and on:", "",
                      "| batch | " + " | ".join(FUSIONS) + " |", "|---" * (len(FUSIONS) + 1) + "|"]
            lines += [f"| {b} | " + " | ".join(f"{ab[f'{n}/{b}']:.3f}" for n in FUSIONS) + " |" for b in (1, 8)]
            lines.append("")
        for name in [n for n in ("bf16", "w4a16") if n in e]:
            lines += [f"Kernels of one {name} decode step (graph replay, µs per step, launches per step; with PDL "
                      "on, a kernel's time includes its wait for the one before it, so the rows overlap):", "",
                      "| kernel | µs | launches |", "|---|---|---|"]
            lines += [f"| `{k}` | {us} | {c} |" for k, us, c in e[name].get("kernels", [])]
            lines.append("")
        for key, title in (("kv_4k", "W4A16, position 4096"), ("kv_16k_b8", "W4A16, batch 8, position 16384")):
            lines += ["", f"| KV cache ({title}) | step ms | tok/s (all sequences) |", "|---|---|---|"]
            for kv, r in e.get("w4a16", {}).get(key, {}).items():
                lines.append(f"| {kv} | {r['step_ms']:.3f} | {r['tok_s']:.1f} |")
        cfg = e.get("attention_config")
        lines += [] if cfg is None else [
            "",
            "Decode attention alone, one layer (32 q / 8 kv heads, d 128, batch 1, CUDA graph of the kernel, "
            "its splits merged in the same launch); config BLOCK_N x warps x stages / codes->16-bit by bit "
            "patterns (fast) or conversion "
            f"(conv); chosen: {cfg['block_n']}x{cfg['num_warps']}x{cfg['num_stages']}, fast={cfg['fast_dequant']}",
            "",
            "| context / KV / config / codes | us | K+V GB/s |",
            "|---|---|---|",
        ]
        for key, r in e.get("attention_micro", {}).items():
            lines.append(f"| {key} | {r['us']:.1f} | {r['gb_s']:.0f} |")
    if "bundled" in res:
        b = res["bundled"]
        lines += [
            "",
            f"Tiny Llama ({b['asset']}) through the runtime on this GPU (arch-neutral folders packed at load): "
            f"bf16 ppl {b['bf16']['ppl']:.3f} (32 windows of 256 held-out tokens); "
            f"KV int8 tokens same as bf16 KV: {b['kv_int8']['same_tokens']}, int4: {b['kv_int4']['same_tokens']}",
            "",
            "| format | layouts | greedy 32 tok == bf16 | same tokens | ppl | ppl +% |",
            "|---|---|---|---|---|---|",
        ]
        for fmt, r in b["formats"].items():
            lines.append(f"| {fmt} | {','.join(r['layouts'])} | {r['identical_greedy']} | {r['same_tokens']} | "
                         f"{r['ppl']:.3f} | {r['ppl_increase_pct']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundled", action="store_true")
    ap.add_argument("--e2e", action="store_true")
    ap.add_argument("--layers", type=int, default=None, help="default: the shape's")
    ap.add_argument("--shape", default="llama3-8b", choices=list(SHAPES), help="--e2e's model shape")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--formats", default=",".join(FORMATS),
                    help="--e2e's models (bf16 is the base of the speed-ups; F+head: lm_head quantized too)")
    ap.add_argument("--quick", action="store_true", help="--e2e: batch-1 decode (and the reference step) only")
    ap.add_argument("--fusion-ab", action="store_true",
                    help="--e2e --quick: the W4A16 step with each launch-saving fusion off and on all the same")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    ap.add_argument("--asset", type=Path, default=Path(M.__file__).resolve().parents[1] / "assets" / "tiny-llama",
                    help="model folder for --bundled (default: the bundled tiny-llama)")
    args = ap.parse_args()
    res: dict = {}
    if args.bundled:
        res["bundled"] = bundled(args.asset)
        res["bundled"]["asset"] = str(args.asset)
    if args.e2e:
        layers = args.layers or SHAPES[args.shape].n_layers
        res["e2e"] = e2e(layers, args.prompt, args.new_tokens, tuple(args.formats.split(",")), args.shape, args.quick,
                         args.fusion_ab)
    md = markdown(res, "python benchmarks/bench_e2e.py " + " ".join(sys.argv[1:]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_e2e.json").write_text(json.dumps(res, indent=2, default=str))
    (args.out / "bench_e2e.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
