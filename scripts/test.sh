#!/usr/bin/env bash
# Set up .venv with the test extras and run the whole test suite (CPU only; GPU tests skip).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export TURBOPACK_TEST_CPU=1 NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.venv/numba-cache}"
exec .venv/bin/python -m pytest "$@"
