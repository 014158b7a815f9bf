"""The environment as bad input: an output path that cannot be written, a disk that fills up mid
write, Ctrl-C mid run. Each gives one line (or exit 130 for Ctrl-C), no output folder and no temp
folder left, the input unchanged, and a rerun that works.

Tests here run as root in CI, where permission bits do not apply; "not writable" is therefore
tested three ways: the early os.access check (simulated), a real refusal by the kernel (/sys,
where even root cannot create folders), and real permission bits (only when not root).
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from robusthelp import quantized_w4, refused, run_cli, src, temp_leftovers, tree_hash  # noqa: F401

import turbopack.checkpoint.safetensors_stream as stream

W8 = ["-f", "w8a16"]


def _argv(cmd: str, src: Path, out: Path) -> list:
    if cmd == "quantize":
        return ["quantize", src, "-o", out, *W8]
    return ["pack", src, "--format", "w8a16", "--arch", "sm90", "-o", out]


# --- output not writable ---------------------------------------------------------------------------


def test_output_parent_not_writable_simulated(capsys, src, tmp_path, monkeypatch):
    """The early check (before any work): os.access says the parent cannot be written."""
    parent = tmp_path / "ro"
    parent.mkdir()
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: False if Path(p) == parent and mode & os.W_OK else real(p, mode, **kw)
    )
    refused(capsys, _argv("quantize", src, parent / "out"), src, parent / "out",
            f"{parent / 'out'}: cannot write to {parent}; choose a writable -o")


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="no /sys")
def test_output_refused_by_the_kernel(capsys, src):
    """A real OS refusal: nobody may create folders in sysfs (root: EPERM from mkdir; others:
    the early os.access check). Either way one line, exit 2."""
    out = Path("/sys/turbopack-robustness-out")
    line = refused(capsys, _argv("quantize", src, out), src, out, "choose a writable -o")
    assert "/sys" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits (see the two tests above)")
def test_output_parent_chmod_0555(capsys, src, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        refused(capsys, _argv("quantize", src, parent / "out"), src, parent / "out", "choose a writable -o")
    finally:
        parent.chmod(0o755)


def test_output_parent_missing(capsys, src, tmp_path):
    out = tmp_path / "no" / "such" / "out"
    refused(capsys, _argv("quantize", src, out), src, None, "parent folder", "does not exist; create it first")
    assert not (tmp_path / "no").exists()


# --- disk full mid-write ---------------------------------------------------------------------------


class _FillsUp:
    """A file that raises ENOSPC, like a full disk, once ``budget`` bytes have been written."""

    def __init__(self, f, budget: list[int]):
        self._f, self._budget = f, budget

    def write(self, data):
        self._budget[0] -= len(data)
        if self._budget[0] < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


@pytest.mark.parametrize("cmd", ["quantize", "pack"])
def test_disk_full_injected(capsys, src, tmp_path, monkeypatch, cmd):
    budget = [50_000]  # the tiny model's output is ~100 kB: fails part way through the shard
    real_open = open
    monkeypatch.setattr(stream, "open", lambda path, mode="r", *a, **k: _FillsUp(real_open(path, mode, *a, **k), budget)
                        if "w" in mode else real_open(path, mode, *a, **k), raising=False)
    out = tmp_path / "out"
    refused(capsys, _argv(cmd, src, out), src, out,
            f"no space left on device writing {out / 'model.safetensors'}; free space or choose another -o")
    assert budget[0] < 0  # the failure really was injected mid-write
    monkeypatch.undo()
    rc, _, err = run_cli(capsys, *_argv(cmd, src, out))
    assert rc == 0 and (out / "turbopack.json").is_file(), err


@pytest.fixture
def small_fs(tmp_path):
    """A real 1 MiB tmpfs with ~40 kB left (needs mount rights, e.g. root; skipped otherwise)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.decode().strip()}); the injected test covers it")
    try:
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        (mnt / "filler").write_bytes(b"\0" * (free - 40_000))
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_disk_full_real_filesystem(capsys, src, small_fs):
    out = small_fs / "out"
    refused(capsys, _argv("quantize", src, out), src, out, "no space left on device writing", str(out),
            "free space or choose another -o")
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler"]
    (small_fs / "filler").unlink()
    rc, _, err = run_cli(capsys, *_argv("quantize", src, out))
    assert rc == 0 and (out / "turbopack.json").is_file(), err


# --- Ctrl-C mid-run --------------------------------------------------------------------------------


def _interrupt_on_call(monkeypatch, module, name: str, n: int) -> list[int]:
    """Make ``module.name`` raise KeyboardInterrupt on its n-th call (as Ctrl-C would there)."""
    real = getattr(module, name)
    calls = [0]

    def wrapped(*a, **k):
        calls[0] += 1
        if calls[0] == n:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(module, name, wrapped)
    return calls


@pytest.mark.parametrize("cmd", ["quantize", "pack"])
def test_ctrl_c_mid_run_cleans_up_and_rerun_works(capsys, src, quantized_w4, tmp_path, monkeypatch, cmd):
    import turbopack.packer.pack as packmod
    import turbopack.packer.rtn as quantmod

    if cmd == "quantize":
        model, argv = src, _argv("quantize", src, tmp_path / "out")
        calls = _interrupt_on_call(monkeypatch, quantmod, "quantize_tensor", 3)
    else:
        model, argv = quantized_w4, ["pack", quantized_w4, "--arch", "sm90", "-o", tmp_path / "out"]
        calls = _interrupt_on_call(monkeypatch, packmod, "_write_job", 3)
    before = tree_hash(model)
    rc, stdout, err = run_cli(capsys, *argv)
    assert rc == 130, err
    assert calls[0] == 3 and err.strip().splitlines()[-1] == "interrupted; no output was left behind"
    assert not (tmp_path / "out").exists() and temp_leftovers(tmp_path) == []
    assert tree_hash(model) == before
    monkeypatch.undo()
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 0 and (tmp_path / "out" / "turbopack.json").is_file(), err
    rc, stdout, _ = run_cli(capsys, "verify", tmp_path / "out")
    assert rc == 0 and stdout.startswith("ok ")


def test_ctrl_c_while_replacing_with_force_keeps_the_old_output(capsys, src, tmp_path, monkeypatch):
    """--force replaces OUT only once the new one is complete: Ctrl-C leaves the old OUT intact."""
    import turbopack.packer.rtn as quantmod

    out = tmp_path / "out"
    assert run_cli(capsys, *_argv("quantize", src, out))[0] == 0
    old = tree_hash(out)
    _interrupt_on_call(monkeypatch, quantmod, "quantize_tensor", 2)
    rc, _, err = run_cli(capsys, *_argv("quantize", src, out), "--force")
    assert rc == 130, err
    assert tree_hash(out) == old and temp_leftovers(tmp_path) == []
