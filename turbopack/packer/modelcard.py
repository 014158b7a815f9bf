"""The README.md model card `turbopack upload` writes: YAML front matter the Hub indexes
(base_model, library_name, tags, pipeline_tag, our quantization facts) and a body that says what
the folder is, how good it is (quality.json, when `turbopack check`/`eval` left one), and how to
run it with turbopack and, for a compressed-tensors export, with vLLM.

Everything comes from the folder itself: config.json's quantization_config and turbopack.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from turbopack.checkpoint import MANIFEST_NAME
from turbopack.checkpoint.hub import hub_id_of_cache_path

QUALITY_FILES = ("quality.json", "check.json", "eval.json")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe(folder: Path) -> dict[str, Any]:
    """The facts a card states, from config.json and turbopack.json."""
    config = _read(folder / "config.json")
    manifest = _read(folder / MANIFEST_NAME)
    qc = config.get("quantization_config") or {}
    fmt = manifest.get("format") or {
        k: qc.get(k) for k in ("format", "group_size", "sym", "scale_dtype", "per_tensor") if k in qc
    }
    exported = qc.get("quant_method") == "compressed-tensors"
    if exported:
        fmt = manifest.get("format") or {}
    return {
        "architecture": (config.get("architectures") or ["unknown"])[0],
        "kind": manifest.get("kind") or ("compressed-tensors" if exported else "unknown"),
        "format": fmt.get("format"),
        "group_size": fmt.get("group_size"),
        "sym": fmt.get("sym"),
        "scale_dtype": fmt.get("scale_dtype"),
        "per_tensor": fmt.get("per_tensor"),
        "method": qc.get("method") or _first_method(manifest) or ("compressed-tensors" if exported else None),
        "arch": qc.get("arch") or manifest.get("arch"),
        "tp": qc.get("tp") or manifest.get("tp"),
        "layouts": sorted(set((qc.get("layouts") or {}).values())),
        "layout_version": qc.get("layout_version"),
        "exported": exported,
        "source": manifest.get("source"),
        "quantized": len(manifest.get("tensors") or {}) or len((manifest.get("exported") or {}).get("modules", [])),
        "kept": len(manifest.get("unquantized") or {}),
        "imported_from": (qc.get("imported_from") or {}).get("quant_method"),
    }


def _first_method(manifest: dict) -> str | None:
    for info in (manifest.get("tensors") or {}).values():
        if isinstance(info, dict) and info.get("method"):
            return info["method"]
    return None


def quality_rows(folder: Path) -> list[tuple[str, str]]:
    """(metric, value) rows from the first quality file found: numbers at any depth up to two,
    named by their path ("perplexity.wikitext2")."""
    for name in QUALITY_FILES:
        data = _read(folder / name)
        if data:
            rows: list[tuple[str, str]] = []
            _flatten(data, "", rows, depth=0)
            return rows
    return []


def _flatten(obj: Any, prefix: str, rows: list, depth: int) -> None:
    if isinstance(obj, bool) or obj is None:
        return
    if isinstance(obj, (int, float)):
        rows.append((prefix or "value", f"{obj:.4g}" if isinstance(obj, float) else str(obj)))
    elif isinstance(obj, str) and prefix:
        rows.append((prefix, obj))
    elif isinstance(obj, dict) and depth < 3:
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), rows, depth + 1)


def front_matter(facts: dict[str, Any], base_model: str | None) -> dict[str, Any]:
    tags = ["turbopack", "quantized"]
    for value in (facts["format"], facts["arch"], facts["method"]):
        if value and value not in tags:
            tags.append(str(value))
    if facts["format"] == "w4a16":
        tags += ["4-bit", "int4"]
    if facts["exported"]:
        tags += ["compressed-tensors", "vllm"]
    meta: dict[str, Any] = {}
    if base_model:
        meta["base_model"] = base_model
    meta.update({"library_name": "compressed-tensors" if facts["exported"] else "turbopack", "tags": tags,
                 "pipeline_tag": "text-generation"})
    q = {k: facts[k] for k in ("format", "group_size", "sym", "scale_dtype", "per_tensor", "method", "arch", "tp",
                               "layout_version") if facts.get(k) not in (None, [], {})}
    q["layout"] = (
        "packed" if facts["kind"] == "packed" else ("compressed-tensors" if facts["exported"] else "arch-neutral")
    )
    meta["turbopack"] = q
    return meta


def build_card(folder: str | Path, repo_id: str, base_model: str | None = None) -> str:
    folder = Path(folder)
    facts = describe(folder)
    base_model = base_model or (hub_id_of_cache_path(facts["source"]) if facts["source"] else None)
    meta = front_matter(facts, base_model)
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "", f"# {repo_id.split('/')[-1]}", ""]
    what = {
        "packed": f"packed by turbopack for **{facts['arch']}** GPUs",
        "quantized": "an arch-neutral turbopack quantized checkpoint",
        "compressed-tensors": "a compressed-tensors checkpoint exported by turbopack",
    }.get(facts["kind"], "a turbopack checkpoint")
    src = f" of [{base_model}](https://huggingface.co/{base_model})" if base_model else ""
    lines += [f"{facts['architecture']}{src}, quantized to **{facts['format'] or '?'}**: {what}.", ""]
    lines += ["| property | value |", "| --- | --- |"]
    for label, key in (
        ("format", "format"),
        ("group size", "group_size"),
        ("symmetric", "sym"),
        ("scale dtype", "scale_dtype"),
        ("method", "method"),
        ("imported from", "imported_from"),
        ("target arch", "arch"),
        ("tensor parallel", "tp"),
        ("quantized linears", "quantized"),
        ("kept unquantized", "kept"),
    ):
        if facts.get(key) not in (None, "", 0) or key in ("quantized",):
            lines.append(f"| {label} | {facts[key]} |")
    if facts["layouts"]:
        lines.append(f"| layouts | {', '.join(facts['layouts'])} |")
    rows = quality_rows(folder)
    lines += ["", "## Quality", ""]
    if rows:
        lines += ["| metric | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
    else:
        lines.append(
            "No quality numbers were recorded (run `turbopack check` / `turbopack eval` and save the result as "
            "quality.json)."
        )
    lines += ["", "## Usage", ""] + _usage(facts, repo_id)
    return "\n".join(lines).rstrip() + "\n"


def _usage(facts: dict[str, Any], repo_id: str) -> list[str]:
    if facts["exported"]:
        return [
            "With vLLM (tensor parallelism across GPUs works as for any compressed-tensors model):",
            "",
            "```bash",
            f"vllm serve {repo_id} --tensor-parallel-size 2",
            "```",
            "",
            "With transformers (dequantizes on load):",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM",
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
            "```",
        ]
    run = ["```bash", "pip install turbopack"]
    if facts["kind"] == "packed":
        run += [f"turbopack run {repo_id} --prompt \"Hello\"   # on a {facts['arch']} GPU"]
    else:
        run += [f"turbopack pack {repo_id} --arch auto -o local-packed", 'turbopack run local-packed --prompt "Hello"']
    run += ["```", "", "From transformers code (generate, pipelines):", "", "```python", "import turbopack",
            f"model = turbopack.load_hf(\"{repo_id}\")", "```", "",
            "For vLLM, export it first: `turbopack export <this folder> --to compressed-tensors -o out`."]
    return run
