"""End-to-end evaluation that spans the pipeline (quantize -> pack -> run): `turbopack check`."""
