"""Errors that mean "the input is wrong", as opposed to bugs.

Every class here carries the process exit code the CLI returns (2: bad usage or input) and a
message that names the file/tensor and the fix, on one line. The CLI prints ``str(err)`` and exits;
a traceback is shown only when TURBOPACK_DEBUG=1.
"""

from __future__ import annotations


class TurbopackError(Exception):
    """Bad input or usage: one line naming the file/tensor and the fix."""

    exit_code = 2


class UnsupportedModelError(TurbopackError):
    """The checkpoint's architecture (config.json) is not one we can quantize or run."""


class UnknownNameError(TurbopackError, KeyError):
    """A registry lookup (format, layout, arch) failed; the message lists the registered names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


class ShapeError(TurbopackError):
    """A tensor shape that a format, group size or tile cannot take."""


class BadTensorError(TurbopackError):
    """A tensor's values cannot be quantized (NaN/Inf)."""


class CheckpointError(TurbopackError):
    """A checkpoint file or folder is missing, corrupt or inconsistent."""


class OutputExistsError(TurbopackError):
    """The output path exists and --force was not given."""


class ResumeRefusedError(CheckpointError):
    """A --resume partial output this run may not continue: written for another job, or in use."""


class Interrupted(TurbopackError):
    """Ctrl-C after which something was deliberately kept (a --resume partial output); the
    message says what, so the CLI prints it instead of "no output was left behind"."""

    exit_code = 130
