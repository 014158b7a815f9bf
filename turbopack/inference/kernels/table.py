"""The tuned kernel table, ``configs/<arch>.json``: the one source of which kernel, with which
config, reads a layout for a weight shape and batch size. Dispatch reads it at run time; the packer
reports it (the manifest's per-module ``kernel`` and ``pack --explain``), so what a packed folder
says it will run is what runs. Pure JSON reading: no torch, no triton.

    {"version": 1, "arch": "sm90", "device": ..., "measured": ..., "source": ...,
     "layouts": {"w4_t64x64": {"default": {"<M bucket>": cfg, ...},
                               "shapes": {"<N>x<K>": {"<M bucket>": cfg, ...}}}}}

An entry applies to the smallest tuned bucket >= M; past the largest, none (the kernel family's
untuned default runs): a small-batch config is never extrapolated to a large batch.

An arch with no table (all but sm90 today: sm75-sm89, sm100, sm120) runs each family's untuned
default, which is arch-neutral Triton (GEMV at M = 1, tensor cores above; the CUDA C++ kernels run
only where a tuned entry names them). Another arch's table is never borrowed: its entries are
tuned to one part's SM count and shared memory (sm90's 4-stage 128x128 tiles do not fit sm120's
100 KB) and to its layouts (sm90 tunes w4_t64x64; sm100 and sm120 run w4_t16x64). A device maps to
its registered arch first (dispatch.device_arch: sm103 -> sm100, sm121 -> sm120, sm87 -> sm86).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from typing import Any

CONFIG_VERSION = 1


@functools.cache
def load_table(arch: str) -> dict[str, Any]:
    """configs/<arch>.json, or an empty table when none was tuned for this arch."""
    res = importlib.resources.files("turbopack.inference.kernels").joinpath("configs", f"{arch}.json")
    if not res.is_file():
        return {"version": CONFIG_VERSION, "arch": arch, "layouts": {}}
    table = json.loads(res.read_text())
    if table.get("version") != CONFIG_VERSION:
        # a packaging bug, not user input
        raise ValueError(
            f"turbopack/inference/kernels/configs/{arch}.json: version {table.get('version')}, expected "
            f"{CONFIG_VERSION}"
        )
    return table


def bucket_entry(by_bucket: dict[str, dict], m: int) -> dict | None:
    """The entry of the smallest tuned bucket >= m; None past the largest (no extrapolation of a
    small-M config to a large batch)."""
    b = min((int(b) for b in by_bucket if int(b) >= m), default=None)
    return None if b is None else by_bucket[str(b)]


def lookup(arch: str, layout: str, n: int, k: int, m: int) -> dict | None:
    """The tuned entry for (layout, N x K, M), falling back to the layout's default shape."""
    entry = load_table(arch).get("layouts", {}).get(layout, {})
    for by_bucket in (entry.get("shapes", {}).get(f"{n}x{k}"), entry.get("default")):
        hit = bucket_entry(by_bucket or {}, m)
        if hit is not None:
            return hit
    return None



#: what the CUDA C++ W4 kernels need of a weight, known at pack time (cuda_w4.supports checks the
#: call's dtypes and strides at run time); an entry a weight cannot take runs the family default
STATIC_SUPPORT = {
    "cuda": lambda k, group: k % 128 == 0 and group in (64, 128),
    "dq_mm": lambda k, group: group in (32, 64, 128),
}


def plan(arch: str, layout: str, n: int, k: int, group: int | None = None) -> dict[str, dict]:
    """{M bucket: config} that dispatch uses for a weight of N x K in ``layout`` on ``arch``: the
    shape's own tuned entries where there are, else the layout's defaults ({} when untuned); with
    the int4 ``group``, entries the weight cannot take become ``{"kernel": "default"}``."""
    entry = load_table(arch).get("layouts", {}).get(layout, {})
    own = entry.get("shapes", {}).get(f"{n}x{k}") or {}
    rows = {**entry.get("default", {}), **own}
    out = {}
    for b in sorted(rows, key=int):
        ok = STATIC_SUPPORT.get(rows[b].get("kernel"))
        out[b] = dict(rows[b]) if ok is None or group is None or ok(k, group) else {"kernel": "default"}
    return out


def describe(by_bucket: dict[str, dict]) -> str:
    """One short line: "M<=1 cuda(SPLIT_K=2,STAGES=4); M<=16 ...; M>2048 untuned default"."""
    if not by_bucket:
        return "untuned: the kernel family's default"
    parts = []
    for b, cfg in by_bucket.items():
        rest = ",".join(f"{key}={v}" for key, v in cfg.items() if key != "kernel")
        parts.append(f"M<={b} {cfg.get('kernel', '?')}" + (f"({rest})" if rest else ""))
    return "; ".join(parts) + f"; M>{max(by_bucket, key=int)} default"
