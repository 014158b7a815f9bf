"""Which layout a format gets on an arch: versioned JSON tables, not branches.

``tables/<arch>.json``::

    {"version": 1, "arch": "sm90",
     "rules": [{"format": "w4a16", "match": {"scale_dtype": "float16"},   # match: optional
                "layout": "w4_t64x64", "why": "..."}],
     "unsupported": [{"format": "fp8", "match": {...}, "fix": "..."}]}     # optional

The first rule whose ``format`` and ``match`` (a subset of ``Format.params()``) fit wins. Which
kernel (and config) then reads the layout is not decided here: the tuned table of the kernels,
turbopack/inference/kernels/configs/<arch>.json, is the one source (dispatch reads it; the
manifest and ``pack --explain`` report it through turbopack.inference.kernels.table).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from dataclasses import dataclass
from typing import Any

from turbopack.errors import TurbopackError
from turbopack.formats import Format, FormatName
from turbopack.layouts.archs import Arch, ArchName, get_arch
from turbopack.layouts.base import LayoutName, Padding

TABLE_VERSION = 1


@dataclass(frozen=True)
class Choice:
    layout: LayoutName
    why: str
    padding: Padding


def _table_error(arch: str, what: str) -> ValueError:
    # A broken table is a packaging bug, not bad user input.
    return ValueError(f"turbopack/layouts/tables/{arch}.json: {what}")


def _check_rule(arch: Arch, rule: dict[str, Any], i: int) -> None:
    from turbopack.layouts import get_layout  # circular: turbopack.layouts imports this module for select

    where = f"rule {i}"
    for key in ("format", "layout", "why"):
        if key not in rule:
            raise _table_error(arch.name.value, f"{where} has no {key!r}")
    layout = get_layout(rule["layout"])
    if FormatName(rule["format"]) not in layout.format or layout.name not in arch.layouts:
        raise _table_error(
            arch.name.value, f"{where}: layout {layout.name.value} cannot hold {rule['format']} on {arch.name.value}"
        )


@functools.cache
def load_table(arch: str | ArchName) -> dict[str, Any]:
    """The parsed, validated selection table of ``arch`` (cached)."""
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


def select(fmt: Format, arch: str | ArchName | Arch, shape: tuple[int, int]) -> Choice:
    """The layout and padding for a weight of ``shape`` in ``fmt`` on ``arch``."""
    from turbopack.layouts import get_layout  # circular: turbopack.layouts imports this module for select

    a = get_arch(arch)
    table = load_table(a.name)
    for rule in table["rules"]:
        if _matches(rule, fmt):
            layout = get_layout(rule["layout"])
            return Choice(layout.name, rule["why"], layout.padding(shape))
    for entry in table.get("unsupported", []):
        if _matches(entry, fmt):
            raise TurbopackError(f"{fmt.describe()} cannot run on {a.label}: {entry['fix']}")
    ok = sorted({r["format"] for r in table["rules"]})
    raise TurbopackError(f"no layout for {fmt.describe()} on {a.label}; formats with a layout there: {', '.join(ok)}")


def supported(arch: str | ArchName | Arch) -> list[str]:
    """Formats that have at least one rule on ``arch`` (for --help and errors)."""
    return sorted({r["format"] for r in load_table(get_arch(arch).name)["rules"]})


__all__ = ["Choice", "load_table", "select", "supported"]
