"""The CPU suite's nvcc compile checks, run in the background while the other tests run.

Each check is one nvcc process (minutes on CI's two cores; 11 of its 22 minutes of pytest when they
ran in turn in the foreground). conftest.py starts them, one after another on a worker thread, as
soon as collection finishes, and moves the tests that read their results to the end of the
session, so that the compiles overlap the rest of the suite. A test run alone (``-k``) starts its
own job on first use, as a plain call would. Results are kept per key, not shared between keys.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

#: key -> builder of the nvcc command (given a scratch folder for its output); registered by the
#: test modules at import, so collection sees them all
JOBS: dict[str, Callable[[Path], list[str]]] = {}
_RESULTS: dict[str, subprocess.CompletedProcess] = {}
_DONE: dict[str, threading.Event] = {}
_LOCK = threading.Lock()
_RUNNING: set[subprocess.Popen] = set()
_SCRATCH = tempfile.TemporaryDirectory(prefix="tp-nvcc-")


def register(key: str, command: Callable[[Path], list[str]]) -> str:
    JOBS[key] = command
    return key


def folder(key: str) -> Path:
    """Where job ``key`` writes its output."""
    return Path(_SCRATCH.name) / key.replace("/", "_")


def _run(key: str) -> None:
    folder(key).mkdir(parents=True, exist_ok=True)
    try:
        cmd = JOBS[key](folder(key))
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) as proc:  # its own group: _stop ends cicc/ptxas too
            _RUNNING.add(proc)
            out, err = proc.communicate()
            _RUNNING.discard(proc)
        _RESULTS[key] = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    except Exception as e:  # nvcc vanished, say: the test reports it, and no waiter hangs
        _RESULTS[key] = subprocess.CompletedProcess([], 127, "", f"{type(e).__name__}: {e}")
    finally:
        _DONE[key].set()


@atexit.register
def _stop() -> None:
    """A session that ends first (-x, Ctrl-C) leaves no compiler running."""
    for proc in list(_RUNNING):
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)


def _claim(keys: list[str]) -> list[str]:
    """The keys of ``keys`` nobody started yet, now marked started."""
    with _LOCK:
        mine = [k for k in keys if k not in _DONE]
        for k in mine:
            _DONE[k] = threading.Event()
    return mine


def start(keys: list[str]) -> None:
    """Run ``keys``' jobs one after another on a daemon thread (one nvcc at a time: each already
    compiles its targets side by side with --threads)."""
    mine = _claim(keys)
    if mine:
        threading.Thread(target=lambda: [_run(k) for k in mine], daemon=True, name="nvcc-jobs").start()


def result(key: str) -> subprocess.CompletedProcess:
    """The finished job ``key`` (run here and now if nothing started it)."""
    if _claim([key]):
        _run(key)
    _DONE[key].wait()
    return _RESULTS[key]
