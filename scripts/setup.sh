#!/usr/bin/env bash
# Create .venv and install turbopack into it.
#   bash scripts/setup.sh          # runtime deps
#   bash scripts/setup.sh --test   # + test deps (pytest, hypothesis, transformers, tokenizers, triton)
# torch: TORCH_SPEC picks the build (default: the CPU build 2.13.0 that the CI machines carry on disk;
# on a GPU box use e.g. TORCH_SPEC="torch==2.11.*" with your CUDA index, or an existing venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  $PIP install -q --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}"
fi
EXTRA=""
[ "${1:-}" = "--test" ] && EXTRA="[test]"
$PIP install -q --disable-pip-version-check -e ".${EXTRA}"
