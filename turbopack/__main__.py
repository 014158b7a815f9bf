"""`python -m turbopack ...` is the `turbopack` command."""

from turbopack.cli.app import run

run()
