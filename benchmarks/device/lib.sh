# Sourced by the device scripts: strict mode, $OUT (what comes back), the environment the
# benchmarks expect, step() headers, build_libs (benchmarks/device/build_libs.py).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TRITON_CACHE_DIR=/tmp/triton-cache
step() { echo "=== $1 [$(date +%T)]"; }
build_libs() { timeout ${BUILD_S:-100} python3 benchmarks/device/build_libs.py "$@"; }
