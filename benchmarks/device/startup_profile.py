#!/usr/bin/env python3
"""Where a warm `turbopack run` spends its time on a GPU (issue 10's warm-start bar: <= 3 s for the
whole command). Runs the CLI in-process under cProfile and prints the heaviest cumulative entries
of turbopack, triton and torch.cuda, plus the process start to `main` time.

    python3 benchmarks/device/startup_profile.py PACKED_FOLDER [--top 40]
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time

T0 = time.perf_counter()


def main() -> None:
    folder = sys.argv[1]
    top = int(sys.argv[sys.argv.index("--top") + 1]) if "--top" in sys.argv else 40
    prof = cProfile.Profile()
    prof.enable()
    t_import = time.perf_counter()
    from turbopack.cli.app import main as cli

    t_cli = time.perf_counter()
    rc = cli(["run", folder, "--prompt", "ROMEO:", "--max-new-tokens", "1"])
    t_end = time.perf_counter()
    prof.disable()
    print(f"rc={rc} interpreter start..main {t_import - T0:.2f}s  import cli {t_cli - t_import:.2f}s  "
          f"run {t_end - t_cli:.2f}s", file=sys.stderr)
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).sort_stats("cumulative")
    stats.print_stats(r"turbopack|triton/runtime|triton/compiler|torch/cuda|ctypes", top)
    for line in buf.getvalue().splitlines():
        parts = line.split(None, 5)  # ncalls tottime percall cumtime percall where
        if len(parts) == 6 and parts[3].replace(".", "", 1).isdigit():
            print(f"{float(parts[3]):7.3f}s  {parts[5][-110:]}", file=sys.stderr)


if __name__ == "__main__":
    main()
