"""Self-generated calibration text: the model writes its own calibration set, offline.

Each sample starts from one of a set of short prompts that open different kinds of text (prose,
dialogue, code, lists, questions, numbers, other languages) and continues by sampling from the
model's own next-token distribution (temperature 1: the model's distribution as it is, no
truncation) up to ``seq_len`` tokens. So the activations the methods calibrate on are those of
text the model finds likely, in its own tokenizer and languages, with no file and no network.

Cost: one decoding pass of ``samples x seq_len`` tokens through the float model (batched, with a
KV cache), about the cost of one more calibration forward; the model is held whole in memory
(float32 on the CPU, bfloat16 on a GPU) for it. Deterministic for a seed on one device type.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

# Openings of varied text, not a corpus: the model writes the rest. Written for this project.
PROMPTS = (
    "The", "In the beginning", "Once upon a time,", "Chapter 1\n\n", "Dear Sir,\n\n",
    "Q: What is", "How do I", "The following is a list of", "1.", "Abstract\n\n",
    "def main():\n", "import ", "<html>\n", "SELECT", "{\n  \"", "# Introduction\n\n",
    "Yesterday", "According to the report,", "The results show that", "In 1987,",
    "Ingredients:\n", "Step 1:", "Thank you for", "I think", "\"Hello,\" she said.",
    "The theorem states that", "Price:", "Breaking news:", "User: ", "Summary:",
    "Il était une fois", "Der", "El", "这是", "Это", "The weather today",
)

CHUNK_TOKENS = 1 << 16  # sequences decoded together: bounds the KV cache and logits, not results


def prefix_cache():
    """The model's static KV cache, attending over the filled prefix only and with SDPA's own GQA:
    decoding reads each cached K/V once instead of copying the whole cache per step (the default
    cache expands it for every head, fixed shapes being what CUDA graphs need, not this loop)."""
    import torch.nn.functional as F

    from turbopack.inference.model import KVCache, sdpa_gqa

    class PrefixCache(KVCache):
        def attention(self, q, input_pos, mask):
            n, b = int(input_pos.max()) + 1, q.shape[0]
            k, v = self.k[:b, :, :n], self.v[:b, :, :n]
            if self.softcap is not None:  # Gemma 2: SDPA has no soft-cap
                return sdpa_gqa(q, k, v, mask[:, :n], self.scale, self.softcap)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, :n], scale=self.scale,
                                                  enable_gqa=q.shape[1] != self.k.shape[1])

    return PrefixCache


def _bos(model_folder: Path) -> int | None:
    """The model's BOS id from config.json, put before each prompt as in its training documents."""
    try:
        bos = json.loads((Path(model_folder) / "config.json").read_text()).get("bos_token_id")
    except (OSError, json.JSONDecodeError):
        return None
    return bos if isinstance(bos, int) else None


def prompt_ids(model_folder: Path, vocab: int | None) -> list[list[int]]:
    from turbopack.packer.calibration.data import load_tokenizer

    bos, tok = _bos(model_folder), load_tokenizer(model_folder)
    out = []
    for p in PROMPTS:
        ids = [i for i in tok.encode(p, add_special_tokens=False).ids if vocab is None or i < vocab]
        if bos is not None and (vocab is None or bos < vocab):
            ids = [bos] + ids
        if ids:
            out.append(ids)
    return out


@torch.no_grad()
def generate(model, prompts: list[list[int]], seq_len: int, gen: torch.Generator) -> torch.Tensor:
    """[len(prompts), seq_len]: each prompt (teacher-forced) then sampled tokens, one position at a time."""
    device = model.model.embed_tokens.weight.device
    b = len(prompts)
    forced = torch.full((b, seq_len), -1, dtype=torch.int64)
    for i, p in enumerate(prompts):
        forced[i, :min(len(p), seq_len)] = torch.tensor(p[:seq_len])
    model.setup_caches(b, seq_len, cache_cls=prefix_cache())
    out = torch.empty(b, seq_len, dtype=torch.int64)
    token = forced[:, 0].clone()
    for pos in range(seq_len):
        out[:, pos] = token
        if pos + 1 == seq_len:
            break
        logits = model(token[:, None].to(device), torch.tensor([pos], device=device))[:, -1].float().cpu()
        sampled = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0]
        nxt = forced[:, pos + 1]
        token = torch.where(nxt >= 0, nxt, sampled)
    model.kv_caches = None
    return out


def self_generated(req):
    """A sources.Stream of ``req.samples`` generated sequences of ``req.seq_len`` tokens."""
    from turbopack.inference.loader import load_model
    from turbopack.packer.calibration.sources import Stream

    device = req.device or torch.device("cpu")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    prompts = prompt_ids(req.model_folder, req.vocab)
    gen = torch.Generator().manual_seed(req.seed)
    order = torch.randint(0, len(prompts), (req.samples,), generator=gen).tolist()
    req.log(f"calibration data: generating {req.samples} x {req.seq_len} tokens with the model itself (self-generated)")
    t0 = time.perf_counter()
    model = load_model(req.model_folder, dtype=dtype, device=device)
    chunk = max(1, CHUNK_TOKENS // req.seq_len)
    parts = []
    for start in range(0, req.samples, chunk):
        parts.append(generate(model, [prompts[j] for j in order[start:start + chunk]], req.seq_len, gen))
        req.log(
            f"calibration data: {min(start + chunk, req.samples)}/{req.samples} sequences generated, "
            f"{time.perf_counter() - t0:.1f} s"
        )
    del model
    ids = torch.cat(parts).reshape(-1)
    sha = hashlib.sha256(ids.numpy().tobytes()).hexdigest()
    label = f"self-generated (sampled from the model after {len(PROMPTS)} short prompts, seed {req.seed})"
    return Stream(ids, label, sha, {"prompts": len(PROMPTS), "sampling": "temperature 1"})
