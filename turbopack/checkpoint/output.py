"""Atomic output folders: everything is written into a temp dir next to OUT and renamed at the end.

An interrupted or failed run (exception, Ctrl-C) removes its temp dir, so OUT either does not
exist or is complete. With ``force`` an existing OUT is replaced only after the new one is done.
With ``resume`` the temp dir is ``.turbopack-partial-<OUT>`` and a failed run keeps it, for the
next resumed run to continue (turbopack.checkpoint.resume); OUT still appears only complete.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from turbopack.checkpoint.resume import JOURNAL_NAME, fsync_dir, kept_note, partial_dir
from turbopack.errors import CheckpointError, OutputExistsError, ResumeRefusedError, TurbopackError

TEMP_PREFIX = ".turbopack-tmp-"


def check_output(out: Path, force: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Fail early (before any work) on an output we may not write."""
    out = Path(out)
    for src in inputs:
        if out.resolve() == Path(src).resolve():
            raise OutputExistsError(f"{out}: output is the input folder; choose another -o")
    if out.exists() and not force:
        raise OutputExistsError(f"{out}: already exists; pass --force to replace it or choose another -o")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise CheckpointError(f"{out}: parent folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise CheckpointError(f"{out}: cannot write to {parent}; choose a writable -o")


def _newest_file(folder: Path) -> Path | None:
    with contextlib.suppress(OSError):
        files = [p for p in folder.rglob("*") if p.is_file()]
        return max(files, key=lambda p: p.stat().st_mtime_ns) if files else None
    return None


def os_error_message(e: OSError, out: Path | None = None, tmp: Path | None = None) -> str:
    """One line for an OS error (disk full, no permission): the file (as it will be named under
    ``out``, not the temp dir) and the fix."""
    name = next((f for f in (e.filename2, e.filename) if f and tmp and str(f).startswith(str(tmp))), None)
    writing = name is not None or (tmp is not None and not e.filename)
    if writing and name is None:
        name = _newest_file(tmp)  # a write error names no file: the one being written is the newest
    shown = str(name or e.filename or out or "?")
    if tmp is not None and out is not None and shown.startswith(str(tmp)):
        shown = str(Path(out) / Path(shown).relative_to(tmp)) if shown != str(tmp) else str(out)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on device writing {shown}; free space or choose another -o"
    if writing and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {shown} ({e.strerror}); choose a writable -o"
    return f"{shown}: {e.strerror or e}" + ("; choose another -o" if writing else "")


@contextlib.contextmanager
def atomic_output(out: Path, force: bool = False, resume: bool = False) -> Iterator[Path]:
    """Yield a temp dir; on success it becomes ``out``, on any failure it is removed (with
    ``resume``: kept, and the error says so). OS errors (disk full, permissions) become a one-line
    CheckpointError naming the file."""
    out = Path(out)
    check_output(out, force)
    tmp = partial_dir(out) if resume else out.resolve().parent / f"{TEMP_PREFIX}{out.name}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(exist_ok=resume)
    except OSError as e:
        raise CheckpointError(os_error_message(e, out, tmp)) from e
    lock = _lock(tmp) if resume else None
    try:
        yield tmp
        (tmp / JOURNAL_NAME).unlink(missing_ok=True)  # bookkeeping of the partial output, not output
        fsync_dir(tmp)
        if out.exists():
            trash = tmp.with_name(f"{TEMP_PREFIX}{out.name}-{uuid.uuid4().hex[:8]}-old")  # unique even when tmp is not
            out.rename(trash)
            tmp.rename(out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(out)
        fsync_dir(out.resolve().parent)
    except ResumeRefusedError:
        raise  # another run's partial output: not ours to remove, nor to offer to continue
    except OSError as e:
        message = os_error_message(e, out, tmp)  # before the cleanup: it may look into tmp
        raise CheckpointError(_give_up(tmp, resume, message)) from e
    except TurbopackError as e:
        e.args = (_give_up(tmp, resume, str(e)),)
        raise
    except BaseException as e:
        if resume:  # a bug's traceback, or Ctrl-C through the API (the CLI says it in one line)
            e.add_note(kept_note(tmp))
        _give_up(tmp, resume, "")
        raise
    finally:
        if lock is not None:
            os.close(lock)


def _give_up(tmp: Path, resume: bool, message: str) -> str:
    """Remove the temp output, or keep it when resuming; return the error message saying which."""
    if resume:
        return f"{message}; {kept_note(tmp)}"
    shutil.rmtree(tmp, ignore_errors=True)
    return message


def _lock(tmp: Path) -> int:
    """An exclusive lock on the partial output for this run: two resumed runs on one OUT would
    interleave their shards. Released when the fd closes, so a killed run leaves no stale lock."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ResumeRefusedError(f"{tmp}: another turbopack run is writing this partial output; wait for it "
                                 f"to finish, or choose another -o") from None
    return fd
