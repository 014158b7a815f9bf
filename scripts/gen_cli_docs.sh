#!/usr/bin/env bash
# Regenerate docs/cli.md from the typer app (the CLI reference is generated, never hand-edited).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/typer turbopack.cli.app utils docs --name turbopack --title "turbopack CLI reference" --output docs/cli.md
