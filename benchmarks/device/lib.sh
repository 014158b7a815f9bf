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
# ncu's sections for a kernel's limits, with the stall reasons per issued instruction (WarpStateStats'
# breakdown), one metric each; NCU_KEYS picks the lines worth printing
NCU_SECTIONS="--section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats
  --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section SchedulerStats --section SourceCounters"
NCU_STALLS=$(printf 'smsp__average_warps_issue_stalled_%s_per_issue_active.ratio,' long_scoreboard short_scoreboard \
  barrier mio_throttle lg_throttle wait math_pipe_throttle not_selected dispatch_stall no_instruction membar)
NCU_SECTIONS="$NCU_SECTIONS --metrics ${NCU_STALLS%,}"
NCU_KEYS="stalled|Issue Slots|Duration|DRAM Throughput|L2 Cache Throughput|L1/TEX Cache Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Warp Cycles Per Issued|No Eligible|Waves Per SM"
ncu_prof() {  # name, kernel regex, then the python command: $OUT/ncu_<name>.txt and its key lines
  local name=$1 regex=$2; shift 2
  step "ncu $name"
  timeout ${NCU_S:-70} ncu --clock-control none --kernel-name "regex:$regex" --launch-skip 3 --launch-count 1 \
    $NCU_SECTIONS "$@" > "$OUT/ncu_$name.txt" 2>&1
  echo "rc=$?"; grep -E "$NCU_KEYS" "$OUT/ncu_$name.txt" | head -30
}
archive_parts() {  # folders under $1 -> $1/all.tar.xz, one file (a call brings back at most 8)
  local final=$1; shift
  tar -C "$final" -cJf /tmp/all.tar.xz "$@" && (cd "$final" && rm -rf "$@") && mv /tmp/all.tar.xz "$final/"
}
