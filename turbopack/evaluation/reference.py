"""The reference model with quantized weights: every quantized linear computes its format's
reference math (``Format.linear``: dequantized weights for 16-bit activations, per-token
activation quantization for W8A8/FP8). This is the yardstick packed layouts and kernels are
compared against; it runs on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from turbopack.formats import Format
from turbopack.formats.store import QuantizedCheckpoint
from turbopack.inference.model import ModelConfig, Transformer, build_model, replace_linears


class FormatLinear(nn.Module):
    """y = fmt.linear(x, q, bias): the format's reference semantics, no layout involved."""

    def __init__(self, fmt: Format, tensors: dict[str, torch.Tensor], bias: torch.Tensor | None):
        super().__init__()
        self.fmt = fmt
        for k, v in tensors.items():
            self.register_buffer(k, v, persistent=False)
        self.names = tuple(tensors)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = {k: getattr(self, k) for k in self.names}
        return self.fmt.linear(x, q, self.bias)


def load_reference_quantized(folder: str | Path, dtype: torch.dtype = torch.float32) -> Transformer:
    """The reference model for an arch-neutral quantized folder, on the CPU."""
    qc = QuantizedCheckpoint(folder)
    model = build_model(ModelConfig.from_hf_config(qc.config), device="meta", dtype=dtype)
    plain = {n: qc.plain_tensor(n).to(dtype) for n in qc.plain}

    def factory(name: str, linear: nn.Linear) -> nn.Module | None:
        if name not in qc.modules:
            return None
        m = qc.module(name)
        return FormatLinear(m.format, m.tensors, plain.pop(name + ".bias", None))

    replace_linears(model, factory)
    tied = "lm_head.weight" not in plain and "lm_head" not in qc.modules
    model.load_state_dict(plain, strict=False, assign=True)
    if tied:  # HF drops the tied copy; assign=True replaced the embedding Parameter, so re-tie
        model.lm_head.weight = model.model.embed_tokens.weight
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"{folder}: tensors missing after load: {missing[:3]}")
    model.setup_rope(min(model.config.max_position_embeddings, 4096))
    return model.eval()
