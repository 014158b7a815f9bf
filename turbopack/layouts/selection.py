"""Which layout (and kernel config) a format gets on an arch: versioned JSON tables, not branches.

``tables/<arch>.json``::

    {"version": 1, "arch": "sm90", "decode_m_max": 16,
     "rules": [{"format": "w4a16", "match": {"scale_dtype": "float16"},   # match: optional
                "layout": "w4_t64x64", "why": "...",
                "kernel": {"decode": {...}, "prefill": {...}},
                "overrides": [{"n": 28672, "k": 4096, "m_max": 16, "kernel": {...}}]}],  # optional
     "unsupported": [{"format": "fp8", "match": {...}, "fix": "..."}]}                     # optional

The first rule whose ``format`` and ``match`` (a subset of ``Format.params()``) fit wins. Kernel
configs are opaque to this module (the kernels own their keys). ``overrides`` refine them per
weight shape and batch size: an entry applies when its ``n``/``k`` (if given) equal the weight's
and M <= ``m_max`` (if given); its ``kernel`` is merged over the decode/prefill default.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
from dataclasses import dataclass, field
from typing import Any

from turbopack.errors import TurbopackError
from turbopack.formats import Format, FormatName
from turbopack.layouts.archs import Arch, ArchName, get_arch
from turbopack.layouts.base import LayoutName, Padding

TABLE_VERSION = 1
DEFAULT_DECODE_M_MAX = 16


@dataclass(frozen=True)
class Choice:
    layout: LayoutName
    #: {"decode": cfg, "prefill": cfg, "decode_m_max": int, "overrides": [entries for this (N, K)]}
    kernel: dict[str, Any] = field(hash=False)
    why: str
    padding: Padding

    def kernel_for(self, m: int) -> dict[str, Any]:
        """The kernel config for a batch of ``m`` rows (tokens)."""
        base = self.kernel["decode"] if m <= self.kernel["decode_m_max"] else self.kernel["prefill"]
        for entry in self.kernel["overrides"]:
            if m <= entry.get("m_max", m):
                return {**base, **entry["kernel"]}
        return dict(base)


def _table_error(arch: str, what: str) -> ValueError:
    # A broken table is a packaging bug, not bad user input.
    return ValueError(f"turbopack/layouts/tables/{arch}.json: {what}")


def _check_rule(arch: Arch, rule: dict[str, Any], i: int) -> None:
    from turbopack.layouts import get_layout  # circular: turbopack.layouts imports this module for select

    where = f"rule {i}"
    for key in ("format", "layout", "why", "kernel"):
        if key not in rule:
            raise _table_error(arch.name.value, f"{where} has no {key!r}")
    layout = get_layout(rule["layout"])
    if FormatName(rule["format"]) not in layout.format or layout.name not in arch.layouts:
        raise _table_error(
            arch.name.value, f"{where}: layout {layout.name.value} cannot hold {rule['format']} on {arch.name.value}"
        )
    if not all(isinstance(rule["kernel"].get(k), dict) for k in ("decode", "prefill")):
        raise _table_error(arch.name.value, f"{where}: kernel needs 'decode' and 'prefill' dicts")
    for o in rule.get("overrides", []):
        if not isinstance(o.get("kernel"), dict) or set(o) - {"n", "k", "m_max", "kernel"}:
            raise _table_error(arch.name.value, f"{where}: override {o} needs 'kernel' and only n/k/m_max besides")


@functools.cache
def load_table(arch: str | ArchName) -> dict[str, Any]:
    """The parsed, validated selection table of ``arch`` (cached; callers get copies in Choice)."""
    a = get_arch(arch)
    name = a.name.value
    text = importlib.resources.files("turbopack.layouts").joinpath("tables", f"{name}.json").read_text("utf-8")
    table = json.loads(text)
    if table.get("version") != TABLE_VERSION:
        raise _table_error(name, f"version {table.get('version')!r}; this turbopack reads version {TABLE_VERSION}")
    if table.get("arch") != name:
        raise _table_error(name, f"says arch {table.get('arch')!r}")
    for i, rule in enumerate(table["rules"]):
        _check_rule(a, rule, i)
    return table


def _matches(entry: dict[str, Any], fmt: Format) -> bool:
    params = fmt.params()
    return entry["format"] == fmt.name.value and all(params.get(k) == v for k, v in entry.get("match", {}).items())


def _kernel(table: dict[str, Any], rule: dict[str, Any], shape: tuple[int, int]) -> dict[str, Any]:
    n, k = shape
    overrides = [o for o in rule.get("overrides", []) if o.get("n", n) == n and o.get("k", k) == k]
    overrides.sort(key=lambda o: o.get("m_max", float("inf")))
    return copy.deepcopy({
        "decode": rule["kernel"]["decode"],
        "prefill": rule["kernel"]["prefill"],
        "decode_m_max": rule.get("decode_m_max", table.get("decode_m_max", DEFAULT_DECODE_M_MAX)),
        "overrides": overrides,
    })


def select(fmt: Format, arch: str | ArchName | Arch, shape: tuple[int, int]) -> Choice:
    """The layout, kernel config and padding for a weight of ``shape`` in ``fmt`` on ``arch``."""
    from turbopack.layouts import get_layout  # circular: turbopack.layouts imports this module for select

    a = get_arch(arch)
    table = load_table(a.name)
    for rule in table["rules"]:
        if _matches(rule, fmt):
            layout = get_layout(rule["layout"])
            return Choice(layout.name, _kernel(table, rule, shape), rule["why"], layout.padding(shape))
    for entry in table.get("unsupported", []):
        if _matches(entry, fmt):
            raise TurbopackError(f"{fmt.describe()} cannot run on {a.label}: {entry['fix']}")
    ok = sorted({r["format"] for r in table["rules"]})
    raise TurbopackError(f"no layout for {fmt.describe()} on {a.label}; formats with a layout there: {', '.join(ok)}")


def supported(arch: str | ArchName | Arch) -> list[str]:
    """Formats that have at least one rule on ``arch`` (for --help and errors)."""
    return sorted({r["format"] for r in load_table(get_arch(arch).name)["rules"]})


__all__ = ["Choice", "load_table", "select", "supported"]
