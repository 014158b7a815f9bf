# Sourced by the device scripts: strict mode, $OUT (what comes back), the environment the
# benchmarks expect, step() headers, build_libs (benchmarks/device/build_libs.py, seeded from
# $PREBUILT when the call carried it).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TRITON_CACHE_DIR=/tmp/triton-cache
step() { echo "=== $1 [$(date +%T)]"; }
# libraries compiled on the CPU machine (build_libs.py --offline) and carried: seeded, not rebuilt
# (the folder, or its archive: carry .scratch/prebuilt.tar.xz, 1.8 MiB where the folder is 31 MB)
if [ -z "${PREBUILT:-}" ]; then
  PREBUILT=.scratch/prebuilt; [ -f .scratch/prebuilt.tar.xz ] && PREBUILT=.scratch/prebuilt.tar.xz
fi
build_libs() {
  if [ -e "$PREBUILT" ]; then timeout ${BUILD_S:-100} python3 benchmarks/device/build_libs.py --seed "$PREBUILT" "$@"
  else timeout ${BUILD_S:-100} python3 benchmarks/device/build_libs.py "$@"; fi
}
