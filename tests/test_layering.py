"""Imports point down only: a module may import its own layer or lower ones, never a higher one.

The layers, low to high (what each may import is everything at or below it):

    0 base        turbopack/__init__, errors, registry, device, assets   (no turbopack imports but base)
    1 formats     what a quantized tensor is
    2 layouts     how it sits in memory per arch (pure pack/unpack, selection, emulator)
    3 checkpoint  files: lazy reading, sharded writing, atomic output, manifest, Hub ids
    4 packer      files in, files out         4 inference  the model, kernels, runtime loader
    5 evaluation  runs packer and inference end to end (quantize -> pack -> load -> compare)
    6 api, cli    the public entry points: turbopack/api.py and the typer commands

packer and inference share a layer: calibration runs the reference model's blocks, so packer may
import inference; inference must not import packer (the runtime needs only layouts and checkpoint).
Every import counts, at module top or inside a function: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import turbopack

ROOT = Path(turbopack.__file__).parent

LAYERS = {
    "turbopack": 0, "turbopack.errors": 0, "turbopack.registry": 0, "turbopack.device": 0, "turbopack.assets": 0,
    "turbopack.formats": 1,
    "turbopack.layouts": 2,
    "turbopack.checkpoint": 3,
    "turbopack.packer": 4, "turbopack.inference": 4,
    "turbopack.evaluation": 5,
    "turbopack.api": 6, "turbopack.cli": 6, "turbopack.__main__": 6,
}
#: (importer package, imported package) pairs forbidden although their layers allow them
FORBIDDEN = {("turbopack.inference", "turbopack.packer")}


def layer_key(module: str) -> str:
    """The LAYERS key owning ``module``: its longest dotted prefix listed there."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return key
    raise KeyError(module)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, here: str) -> list[tuple[int, str]]:
    """(line, imported turbopack module) for every import statement in the file of module ``here``."""
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target))
    return [(line, t) for line, t in out if t == "turbopack" or t.startswith("turbopack.")]


def upward_imports(path: Path, here: str) -> list[str]:
    src = layer_key(here)
    bad = []
    for line, target in imports_of(path, here):
        dst = layer_key(target)
        if LAYERS[dst] > LAYERS[src] or (src, dst) in FORBIDDEN:
            bad.append(f"{path}:{line}: {src} (layer {LAYERS[src]}) imports {target} (layer {LAYERS[dst]})")
    return bad


def test_every_module_has_a_layer():
    for path in ROOT.rglob("*.py"):
        layer_key(module_name(path))  # raises KeyError for a package missing from LAYERS


def test_imports_point_down():
    bad = [v for path in sorted(ROOT.rglob("*.py")) for v in upward_imports(path, module_name(path))]
    assert not bad, "imports pointing up a layer:\n" + "\n".join(bad)


def test_the_checker_flags_upward_imports(tmp_path):
    """Absolute, relative and function-level imports up a layer are all seen."""
    f = tmp_path / "fake.py"
    f.write_text("from turbopack.formats import get_format\n"
                 "from ..packer import pack\n"
                 "def g():\n    import turbopack.cli.app\n")
    bad = upward_imports(f, "turbopack.layouts.fake")
    assert [b.split(": ")[0].rsplit(":", 1)[1] for b in bad] == ["2", "4"], bad
    f.write_text("from turbopack.packer.pack import pack\n")
    assert upward_imports(f, "turbopack.inference.fake")  # same layer, but the runtime must not need the packer
