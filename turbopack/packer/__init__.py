"""Files in, files out: quantize, pack, verify, inspect, calibration, Hub and interop."""
