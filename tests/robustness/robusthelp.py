"""Shared helpers for the bad-input catalogue (tests/robustness): run the CLI, and check that a
refusal is clean: exit code, ONE line naming the file/tensor and the fix, no output folder, no
stray temp folder next to OUT, and the input folder byte-for-byte unchanged.

Not a conftest (tests/conftest.py owns that name); test modules here import it (pytest puts this
folder on sys.path).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

from turbopack.checkpoint.output import TEMP_PREFIX
from turbopack.cli.app import main


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def tree_hash(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` (a new or changed file shows)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def temp_leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in Path(parent).iterdir() if p.name.startswith(TEMP_PREFIX))


def refused(capsys, argv: list, src: Path, out: Path | None, *expect: str, rc: int = 2) -> str:
    """Run ``turbopack *argv``; assert a clean refusal; return the error line.

    ``expect``: substrings the one error line must contain (the file/tensor and the fix)."""
    before = tree_hash(src)
    code, stdout, err = run_cli(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == rc, f"exit {code}, stderr:\n{err}"
    # progress bars may come before it on stderr; the error itself is the last line, and one line
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], f"not one error line at the end:\n{err}"
    assert "Traceback" not in err and stdout == ""
    for s in expect:
        assert s in errors[0], f"{s!r} not in {errors[0]!r}"
    if out is not None:
        assert not Path(out).exists(), f"{out} was left behind"
        assert temp_leftovers(Path(out).parent) == []
    assert tree_hash(src) == before, "the input folder changed"
    return errors[0]


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- raw safetensors surgery -----------------------------------------------------------------------


def split_safetensors(path: Path) -> tuple[dict, bytes]:
    """(header dict incl. __metadata__, data section bytes) of a safetensors file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_safetensors_raw(path: Path, header: dict | bytes, data: bytes) -> None:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def tensors_by_offset(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


def save_state(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def load_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture
def src(tiny_llama, tmp_path) -> Path:
    """A private copy of the tiny Llama (hidden 64, intermediate 96, 2 layers) to corrupt."""
    return copy_model(tiny_llama, tmp_path / "src")


@pytest.fixture(scope="session")
def quantized_w4(tiny_llama, tmp_path_factory) -> Path:
    """The tiny Llama quantized w4a16 g32 (built once; copy before changing it)."""
    from turbopack.packer.quantize import quantize

    out = tmp_path_factory.mktemp("robust") / "q-w4"
    quantize(tiny_llama, out, "w4a16", group_size=32, progress=False)
    return out


@pytest.fixture(scope="session")
def packed_sm90(quantized_w4, tmp_path_factory) -> Path:
    from turbopack.packer.pack import pack

    out = tmp_path_factory.mktemp("robust") / "p-sm90"
    pack(quantized_w4, out, "sm90", progress=False)
    return out
