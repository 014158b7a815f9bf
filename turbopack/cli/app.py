"""The `turbopack` command: a thin typer layer over the library (turbopack.api).

Exit codes: 0 ok, 1 a check failed, 2 bad usage or input. Results go to stdout, progress and
logs to stderr. Tracebacks only with TURBOPACK_DEBUG=1.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from turbopack.errors import Interrupted, TurbopackError

app = typer.Typer(
    name="turbopack",
    help="Quantize LLM weights, pack them for a GPU architecture, and run them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


@app.callback()
def _root() -> None:
    """Quantize LLM weights, pack them for a GPU architecture, and run them."""


# One module per command; each has register(app). Order = order in --help.
COMMAND_MODULES = ("quantize", "pack", "verify", "inspect", "check", "run", "bench", "eval", "convert", "export",
                   "upload")


def _register_all() -> None:
    for mod in COMMAND_MODULES:
        importlib.import_module(f"turbopack.cli.{mod}_cmd").register(app)


_register_all()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (usage errors: click prints them and exits 2)."""
    from turbopack.checkpoint.hub import enable_hub

    enable_hub()  # MODEL arguments may be Hub ids (org/name[@revision])
    try:
        app(args=argv, prog_name="turbopack", standalone_mode=True)
        return 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if code == 130:  # typer turns Ctrl-C into Exit(130); atomic_output has removed the temp output
            # (a --resume run that kept its partial output raises Interrupted instead, below)
            print("interrupted; no output was left behind", file=sys.stderr)
        return code
    except Interrupted as e:  # Ctrl-C where a --resume partial output was kept: the line says where
        print(e, file=sys.stderr)
        return e.exit_code
    except TurbopackError as e:
        if os.environ.get("TURBOPACK_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; no output was left behind", file=sys.stderr)
        return 130
    except OSError as e:  # the environment (disk full, permissions) is input too: one line, exit 2
        if os.environ.get("TURBOPACK_DEBUG"):
            raise
        from turbopack.checkpoint.output import os_error_message

        print(f"error: {os_error_message(e)}", file=sys.stderr)
        return 2


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
