"""Synthetic checkpoints: random weights for any Llama-family config, written in a streaming way.

For tests and benchmarks at scale (a 70B-shaped checkpoint never exists in memory: each tensor
is generated and written in row chunks, seeded per tensor so the bytes are reproducible).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch

from turbopack.checkpoint import ShardedWriter, ShardPlan, TensorEntry, atomic_output
from turbopack.checkpoint.sharded import DEFAULT_SHARD_BYTES
from turbopack.packer.folder import CHUNK_BYTES


def llama_config(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int = 32000,
                 arch: str = "LlamaForCausalLM") -> dict:
    return {"architectures": [arch], "model_type": "llama", "hidden_size": hidden, "intermediate_size": intermediate,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "vocab_size": vocab, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


def llama_tensors(cfg: dict) -> list[TensorEntry]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    bf = torch.bfloat16
    out = [TensorEntry("model.embed_tokens.weight", bf, (v, h))]
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        out += [TensorEntry(p + "input_layernorm.weight", bf, (h,)),
                TensorEntry(p + "self_attn.q_proj.weight", bf, (q, h)),
                TensorEntry(p + "self_attn.k_proj.weight", bf, (kv, h)),
                TensorEntry(p + "self_attn.v_proj.weight", bf, (kv, h)),
                TensorEntry(p + "self_attn.o_proj.weight", bf, (h, q)),
                TensorEntry(p + "post_attention_layernorm.weight", bf, (h,)),
                TensorEntry(p + "mlp.gate_proj.weight", bf, (i, h)),
                TensorEntry(p + "mlp.up_proj.weight", bf, (i, h)),
                TensorEntry(p + "mlp.down_proj.weight", bf, (h, i))]
    out += [TensorEntry("model.norm.weight", bf, (h,))]
    if not cfg.get("tie_word_embeddings"):
        out.append(TensorEntry("lm_head.weight", bf, (v, h)))
    return out


def write_synthetic(out: str | Path, cfg: dict, seed: int = 0, force: bool = False,
                    max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write a random checkpoint for ``cfg``; weights ~ N(0, 0.02), norms ~ 1."""
    entries = llama_tensors(cfg)
    plan = ShardPlan.build([[e] for e in entries], max_shard_bytes)
    with atomic_output(Path(out), force) as tmp:
        writer = ShardedWriter(tmp, plan, {"format": "pt"})
        for e in entries:
            gen = torch.Generator().manual_seed(seed ^ zlib.crc32(e.name.encode()))
            if len(e.shape) == 1:
                writer.write(e.name, (1 + 0.1 * torch.randn(e.shape, generator=gen)).to(e.dtype))
                continue
            rows = max(1, CHUNK_BYTES // (e.shape[1] * e.dtype.itemsize))
            for r in range(0, e.shape[0], rows):
                n = min(rows, e.shape[0] - r)
                writer.write_rows(e.name, r, (0.02 * torch.randn(n, e.shape[1], generator=gen)).to(e.dtype))
        writer.finish()
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return Path(out)
