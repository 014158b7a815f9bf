#!/usr/bin/env python
"""Linear-layer kernel benchmark on one GPU: turbopack's kernels (W4A16, NVFP4 weight-only, W8A16,
W8A8, FP8) against torch's bf16 cuBLAS, tinygemm int4, cuBLASLt FP8 (_scaled_mm) and int8 (_int_mm) on the
Llama-3-8B layer shapes. The logic lives in turbopack.inference.kernels.bench_main (also behind
``turbopack bench``); docs/benchmarks.md records the runs.

    python benchmarks/bench_linear.py --tune --out $OUT       # check + sweep + time, writes sm90.json
    python benchmarks/bench_linear.py --formats w4a16 --ms 1,16
    python benchmarks/bench_linear.py --formats w4a16,nvfp4 --ms 1,16,256   # NVFP4 beside W4A16
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from turbopack.inference.kernels.bench_main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
