"""Calibration-based quantization: AWQ, GPTQ and SmoothQuant, block by block on calibration text.

    >>> from turbopack.packer.quantize import quantize
    >>> quantize("tiny-llama", "tiny-w4-gptq", "w4a16", group_size=64, method="gptq")

Same output folder as RTN (``turbopack quantize``), so packing and the runtime need nothing new.
Modules: data (calibration text -> token windows), capture (one block at a time, input taps),
grid (the format's quantization grid), fold (scale folding), awq / gptq / smoothquant (one entry
point each), pipeline (the block loop and the writer).
"""

from turbopack.packer.calibration.pipeline import METHODS, CalibOptions, Method, quantize_calibrated

__all__ = ["METHODS", "CalibOptions", "Method", "quantize_calibrated"]
