"""Quality of every (format, method) on a model: the numbers of docs/quality.md.

    python benchmarks/quality.py --out /tmp/tp-quality            # the bundled model, all held-out windows
    python benchmarks/quality.py --model ./my-llama --calib my.jsonl --max-windows 40
    python benchmarks/quality.py --plant-outliers 32 --out /tmp/tp-quality-outliers
    python benchmarks/quality.py --plant-outliers 32 --sources bundled,self,general.txt   # per calibration source

For each case: `turbopack quantize` into --out (kept, so the folders can be packed and run after),
then the evaluation of turbopack.evaluation.metrics against the float model on the same windows:
perplexity change with its paired standard error, mean per-token KL(float || quantized), top-1
agreement; and the fraction of RTN's gap (in perplexity and in KL) that a calibrated method
closes. Prints a markdown table on stdout and writes quality.json beside the folders.

``--plant-outliers F`` first rewrites the model into one that computes the same function but has
the activation outlier channels of real LLMs (which the small bundled model lacks): per layer, 4
random channels of each linear input are made F times larger and the weights that read them F
times smaller (norm weight x F / q,k,v,gate,up columns / F; v rows x F / o columns / F; up rows
x F / down columns / F: attention is linear in v and the MLP in up). F a power of two keeps the
bf16 weights exact, so the float model's perplexity does not move.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from turbopack.evaluation.metrics import Reference, compare, heldout_ids, load_for_eval, windows_of
from turbopack.packer.quantize import quantize

W4 = {"group_size": 64}
# (label, format, options); the first case of each label prefix without a method is its RTN baseline
CASES = [
    ("w4a16 g64 asym", "w4a16", {**W4}),
    ("w4a16 g64 asym", "w4a16", {**W4, "method": "awq"}),
    ("w4a16 g64 asym", "w4a16", {**W4, "method": "gptq", "act_order": False}),
    ("w4a16 g64 asym", "w4a16", {**W4, "method": "gptq"}),  # act-order: GPTQ's default since issue 16
    ("w4a16 g64 sym", "w4a16", {**W4, "sym": True}),
    ("w4a16 g64 sym", "w4a16", {**W4, "sym": True, "method": "awq"}),
    ("w4a16 g64 sym", "w4a16", {**W4, "sym": True, "method": "gptq"}),
    ("w4a16 g32 asym", "w4a16", {"group_size": 32}),
    ("w4a16 g32 asym", "w4a16", {"group_size": 32, "method": "gptq"}),
    ("w8a16", "w8a16", {}),
    ("w8a16", "w8a16", {"method": "gptq"}),
    ("w8a8", "w8a8", {}),
    ("w8a8", "w8a8", {"smooth": True}),
    ("w8a8", "w8a8", {"smooth": True, "method": "gptq"}),
    ("fp8", "fp8", {}),
    ("fp8", "fp8", {"smooth": True}),
    # NVFP4 (e2m1, e4m3 scale per 16, global scale; weight-only, RTN) against int4 at group 128
    # (the bundled model's down_proj has K = 576, which 128 does not divide: those take g64)
    ("w4a16 g128 asym", "w4a16", {"group_size": 128, "k_fallback": "group"}),
    ("w4a16 g128 sym", "w4a16", {"group_size": 128, "sym": True, "k_fallback": "group"}),
    ("nvfp4", "nvfp4", {}),
]


def plant_outliers(src: Path, dst: Path, factor: float, channels: int = 4, seed: int = 0) -> Path:
    """A copy of ``src`` with planted outlier channels (see the module doc); the same function."""
    import shutil

    from safetensors.torch import load_file, save_file

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    files = sorted(dst.glob("model*.safetensors"))
    if len(files) != 1:
        raise SystemExit(f"{src}: --plant-outliers handles single-file models only")
    sd = load_file(str(files[0]))
    cfg = json.loads((src / "config.json").read_text())
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    g = torch.Generator().manual_seed(seed)
    for i in range(1 + max(int(n.split(".")[2]) for n in sd if n.startswith("model.layers."))):
        p = f"model.layers.{i}."
        hidden, inter = sd[p + "input_layernorm.weight"].numel(), sd[p + "mlp.up_proj.weight"].shape[0]
        v_rows = sd[p + "self_attn.v_proj.weight"].shape[0]
        for norm, readers in (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                              ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))):
            c = torch.randperm(hidden, generator=g)[:channels]
            sd[p + norm + ".weight"][c] *= factor
            for r in readers:
                sd[p + r + ".weight"][:, c] /= factor
        # GQA: v row (kv head j, dim d) feeds o's input (head h, d) for each of the `group` query heads h of j
        group = cfg["num_attention_heads"] // cfg["num_key_value_heads"]
        c = torch.randperm(v_rows, generator=g)[:channels]
        sd[p + "self_attn.v_proj.weight"][c] *= factor
        kv_head, d = c // head_dim, c % head_dim
        for j in range(group):
            sd[p + "self_attn.o_proj.weight"][:, (kv_head * group + j) * head_dim + d] /= factor
        c = torch.randperm(inter, generator=g)[:channels]
        sd[p + "mlp.up_proj.weight"][c] *= factor
        sd[p + "mlp.down_proj.weight"][:, c] /= factor
    save_file(sd, str(files[0]), metadata={"format": "pt"})
    return dst


def method_name(opts: dict) -> str:
    gptq = opts.get("method") == "gptq"
    name = opts.get("method", "rtn") + ("+act-order" if gptq and opts.get("act_order", True) else "")
    return name + ("+smooth" if opts.get("smooth") else "")


def run(model: Path, out: Path, calib: str | None, max_windows: int | None, only: str | None) -> list[dict]:
    ref_model, _ = load_for_eval(model)
    windows = windows_of(heldout_ids(model, None, ref_model.config.vocab), 256, max_windows)
    ref = Reference(ref_model, windows)
    print(f"float model: ppl {ref.perplexity:.4f} on {windows.shape[0]} x {windows.shape[1]} tokens", file=sys.stderr)
    rows, baseline = [], {}
    for label, fmt, opts in CASES:
        if only and only not in label:
            continue
        folder = out / f"{label.replace(' ', '-')}-{method_name(opts)}"
        t0 = time.perf_counter()
        quantize(
            model,
            folder,
            fmt,
            force=True,
            progress=False,
            calib=calib if opts.get("method") or opts.get("smooth") else None,
            **opts,
        )
        seconds = time.perf_counter() - t0
        c = compare(load_for_eval(folder)[0], ref).as_dict()
        row = {"label": label, "method": method_name(opts), "quantize_s": round(seconds, 1), **c}
        base = baseline.setdefault(label, row)
        if base is not row:
            row["ppl_gap_closed"] = (
                1 - row["ppl_change_pct"] / base["ppl_change_pct"] if base["ppl_change_pct"] else None
            )
            row["kl_gap_closed"] = 1 - row["kl"] / base["kl"]
        rows.append(row)
        print(
            f"{label} {row['method']}: {row['ppl_change_pct']:+.3f}% kl {row['kl']:.3e} ({seconds:.0f} s)",
            file=sys.stderr,
        )
    (out / "quality.json").write_text(json.dumps({"model": str(model), "float_ppl": ref.perplexity,
                                                  "tokens": windows.numel(), "rows": rows}, indent=2))
    return rows


def source_rows(
    model: Path, out: Path, calib_sources: list[str], max_windows: int | None, methods=("awq", "gptq")
) -> list[dict]:
    """W4A16 g64 asym, RTN and each method x calibration source (--calib values: bundled, self, FILE, hf:...)."""
    ref_model, _ = load_for_eval(model)
    ref = Reference(ref_model, windows_of(heldout_ids(model, None, ref_model.config.vocab), 256, max_windows))
    rows, base = [], None
    for method, source in [("rtn", "-")] + [(m, s) for m in methods for s in calib_sources]:
        folder = out / f"src-{method}-{Path(source).stem if '/' in source else source.replace(':', '_')}"
        t0 = time.perf_counter()
        opts = {} if method == "rtn" else {"method": method, "calib": source}
        quantize(model, folder, "w4a16", group_size=64, force=True, progress=False, **opts)
        row = {"method": method, "source": source, "quantize_s": round(time.perf_counter() - t0, 1),
               **compare(load_for_eval(folder)[0], ref).as_dict()}
        base = base or row
        row["kl_gap_closed"] = None if row is base else 1 - row["kl"] / base["kl"]
        rows.append(row)
        print(f"{method} {source}: kl {row['kl']:.3e} ({row['quantize_s']} s)", file=sys.stderr)
    (out / "sources.json").write_text(
        json.dumps({"model": str(model), "float_ppl": ref.perplexity, "rows": rows}, indent=2)
    )
    return rows


def source_markdown(rows: list[dict]) -> str:
    lines = [
        "| method | calibration | ppl | ppl vs float % (± s.e.) | KL (nats/token) | top-1 agree % "
        "| RTN KL gap closed | quantize s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        closed = "–" if r["kl_gap_closed"] is None else f"{100 * r['kl_gap_closed']:.0f}%"
        lines.append(
            f"| {r['method']} | {r['source']} | {r['perplexity']:.3f} | "
            f"{r['ppl_change_pct']:+.3f} ± {r['ppl_change_stderr_pct']:.3f} | "
            f"{r['kl']:.2e} | {100 * r['top1_agreement']:.2f} | {closed} | {r['quantize_s']} |"
        )
    return "\n".join(lines)


def markdown(rows: list[dict]) -> str:
    def pct(v):
        return "–" if v is None else f"{100 * v:.0f}%"

    lines = [
        "| format | method | ppl | ppl vs float % (± s.e.) | KL (nats/token) | top-1 agree % "
        "| RTN ppl gap closed | RTN KL gap closed | quantize s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['method']} | {r['perplexity']:.3f} | "
            f"{r['ppl_change_pct']:+.3f} ± {r['ppl_change_stderr_pct']:.3f} | "
            f"{r['kl']:.2e} | {100 * r['top1_agreement']:.2f} | {pct(r.get('ppl_gap_closed'))} | "
            f"{pct(r.get('kl_gap_closed'))} | {r['quantize_s']} |"
        )
    return "\n".join(lines)


def main() -> None:
    from turbopack.assets import bundled_model_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("/tmp/tp-quality"))
    ap.add_argument("--calib", default=None, help="--calib of quantize (default: the model's default source)")
    ap.add_argument(
        "--sources",
        default=None,
        metavar="A,B,..",
        help="instead of the format table: W4A16 g64 RTN, AWQ and GPTQ per calibration source (e.g. bundled,self,FILE)",
    )
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--only", default=None, help="only cases whose label contains this")
    ap.add_argument("--plant-outliers", type=float, default=None, metavar="F",
                    help="evaluate a same-function copy of the model with outlier channels F x larger")
    a = ap.parse_args()
    torch.manual_seed(0)
    a.out.mkdir(parents=True, exist_ok=True)
    model = a.model or bundled_model_dir()
    if a.plant_outliers:
        model = plant_outliers(model, a.out / "model-with-outliers", a.plant_outliers)
    if a.sources:
        print(source_markdown(source_rows(model, a.out, a.sources.split(","), a.max_windows)))
    else:
        print(markdown(run(model, a.out, a.calib, a.max_windows, a.only)))


if __name__ == "__main__":
    main()
