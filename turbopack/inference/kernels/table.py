"""The tuned kernel table, ``configs/<arch>.json``: the one source of which kernel, with which
config, reads a layout for a weight shape and batch size. Dispatch reads it at run time; the packer
reports it (the manifest's per-module ``kernel`` and ``pack --explain``), so what a packed folder
says it will run is what runs. Pure JSON reading: no torch, no triton.

    {"version": 1, "arch": "sm90", "device": ..., "measured": ..., "source": ...,
     "layouts": {"w4_t64x64": {"default": {"<M bucket>": cfg, ...},
                               "shapes": {"<N>x<K>": {"<M bucket>": cfg, ...}}}}}

The file is parsed once, into frozen dataclasses (every ``cfg`` a config.KernelConfig; an unknown
key, kernel or bucket is a one-line error naming the file). An entry applies to the smallest tuned
bucket >= M; past the largest, none (the kernel family's untuned default runs): a small-batch
config is never extrapolated to a large batch.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from turbopack.inference.kernels.config import ConfigError, KernelConfig, KernelName

CONFIG_VERSION = 1
_META = ("device", "measured", "source")

#: {M bucket: config}, buckets ascending
Buckets = Mapping[int, KernelConfig]


@dataclass(frozen=True)
class LayoutTable:
    default: Buckets = field(default_factory=dict)
    shapes: Mapping[str, Buckets] = field(default_factory=dict)   # "NxK" -> buckets

    def entries(self, n: int, k: int) -> tuple[Buckets, Buckets]:
        """(the shape's own buckets, the layout's defaults): where a lookup looks, in order."""
        return self.shapes.get(f"{n}x{k}", {}), self.default


@dataclass(frozen=True, eq=False)  # hashed by identity: dispatch memoizes its resolution per table
class KernelTable:
    arch: str
    layouts: Mapping[str, LayoutTable]
    meta: Mapping[str, str] = field(default_factory=dict)   # device, measured, source: as written

    def lookup(self, layout: str, n: int, k: int, m: int) -> KernelConfig | None:
        """The tuned entry for (layout, N x K, M), falling back to the layout's default shape."""
        entry = self.layouts.get(layout)
        for by_bucket in entry.entries(n, k) if entry is not None else ():
            hit = bucket_entry(by_bucket, m)
            if hit is not None:
                return hit
        return None

    @classmethod
    def from_json(cls, d: Any, where: str) -> KernelTable:
        if not isinstance(d, dict) or d.get("version") != CONFIG_VERSION:
            got = d.get("version") if isinstance(d, dict) else type(d).__name__
            raise ConfigError(f"{where}: version {got}, expected {CONFIG_VERSION}; re-run the tuner for this arch")
        unknown = sorted(set(d) - {"version", "arch", "layouts", *_META})
        if unknown or not isinstance(d.get("layouts"), dict):
            raise ConfigError(f"{where}: unknown keys {unknown} or no 'layouts' object; the file is the tuner's "
                              f"(benchmarks/bench_linear.py --tune), re-run it")
        layouts = {name: _layout_from_json(entry, f"{where}: layouts.{name}") for name, entry in d["layouts"].items()}
        meta = {key: d[key] for key in _META if key in d}
        return cls(str(d.get("arch", "")), MappingProxyType(layouts), MappingProxyType(meta))

    def to_json(self) -> dict[str, Any]:
        """The JSON object the tuner writes (key order included)."""
        return {"version": CONFIG_VERSION, "arch": self.arch, **self.meta,
                "layouts": {name: layout_to_json(t) for name, t in self.layouts.items()}}


def _buckets_from_json(d: Any, where: str) -> Buckets:
    if not isinstance(d, dict) or not all(isinstance(b, str) and b.isdigit() and int(b) >= 1 for b in d):
        raise ConfigError(f"{where}: expected {{\"<M bucket >= 1>\": config, ...}}, got {str(d)[:80]}")
    parsed = {int(b): KernelConfig.from_json(cfg, f"{where}.{b}") for b, cfg in d.items()}
    return MappingProxyType(dict(sorted(parsed.items())))


def _layout_from_json(d: Any, where: str) -> LayoutTable:
    if not isinstance(d, dict) or set(d) - {"default", "shapes"} or not isinstance(d.get("shapes", {}), dict):
        raise ConfigError(f"{where}: expected {{\"default\": buckets, \"shapes\": {{\"NxK\": buckets}}}}")
    shapes = {s: _buckets_from_json(b, f"{where}.shapes.{s}") for s, b in d.get("shapes", {}).items()}
    return LayoutTable(_buckets_from_json(d.get("default", {}), f"{where}.default"), MappingProxyType(shapes))


def buckets_to_json(by_bucket: Buckets) -> dict[str, dict[str, Any]]:
    return {str(b): cfg.to_json() for b, cfg in by_bucket.items()}


def layout_to_json(t: LayoutTable) -> dict[str, Any]:
    return {"default": buckets_to_json(t.default), "shapes": {s: buckets_to_json(b) for s, b in t.shapes.items()}}


@functools.cache
def load_table(arch: str) -> KernelTable:
    """configs/<arch>.json, or an empty table when none was tuned for this arch."""
    res = importlib.resources.files("turbopack.inference.kernels").joinpath("configs", f"{arch}.json")
    if not res.is_file():
        return KernelTable(arch, MappingProxyType({}))
    where = f"turbopack/inference/kernels/configs/{arch}.json"
    try:
        d = json.loads(res.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: not JSON ({e}); restore it from git or re-run the tuner") from None
    return KernelTable.from_json(d, where)


def bucket_entry(by_bucket: Buckets, m: int) -> KernelConfig | None:
    """The entry of the smallest tuned bucket >= m; None past the largest (no extrapolation of a
    small-M config to a large batch)."""
    return next((cfg for b, cfg in by_bucket.items() if b >= m), None)


def lookup(arch: str, layout: str, n: int, k: int, m: int) -> KernelConfig | None:
    return load_table(arch).lookup(layout, n, k, m)


#: what the CUDA C++ W4 kernels need of a weight, known at pack time (cuda_w4.supports checks the
#: call's dtypes and strides at run time); an entry a weight cannot take runs the family default
def _whole_stages(k: int, group: int) -> bool:  # the 128-k stage kernels: K in whole stages, group 64 or 128
    return k % 128 == 0 and group in (64, 128)


STATIC_SUPPORT: dict[KernelName, Callable[[int, int], bool]] = {
    KernelName.CUDA: _whole_stages,
    KernelName.DQ_MM: lambda k, group: group in (32, 64, 128),
    KernelName.CUDA_MM: _whole_stages,
    KernelName.CUDA_WG: _whole_stages,
    KernelName.CUDA_WS: _whole_stages,
}
_DEFAULT = KernelConfig(KernelName.DEFAULT)


def plan(arch: str, layout: str, n: int, k: int, group: int | None = None) -> dict[int, KernelConfig]:
    """{M bucket: config} that dispatch uses for a weight of N x K in ``layout`` on ``arch``: the
    shape's own tuned entries where there are, else the layout's defaults ({} when untuned); with
    the int4 ``group``, entries the weight cannot take become the DEFAULT kernel."""
    entry = load_table(arch).layouts.get(layout, LayoutTable())
    own, default = entry.entries(n, k)
    rows = {**default, **own}
    out = {}
    for b in sorted(rows):
        ok = STATIC_SUPPORT.get(rows[b].kernel)
        out[b] = rows[b] if ok is None or group is None or ok(k, group) else _DEFAULT
    return out


def plan_from_json(d: Any, where: str) -> dict[int, KernelConfig]:
    """A plan as the manifest / pack --explain write it (``buckets_to_json``), read back."""
    return dict(_buckets_from_json(d, where))


def describe(by_bucket: Buckets) -> str:
    """One short line: "M<=1 cuda(SPLIT_K=2,STAGES=4); M<=16 ...; M>2048 untuned default"."""
    if not by_bucket:
        return "untuned: the kernel family's default"
    parts = [f"M<={b} {cfg.describe()}" for b, cfg in by_bucket.items()]
    return "; ".join(parts) + f"; M>{max(by_bucket)} default"
