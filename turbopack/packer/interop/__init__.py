"""Interoperability: import AWQ / GPTQ / compressed-tensors checkpoints (convert) and export ours to
compressed-tensors for vLLM (export)."""
