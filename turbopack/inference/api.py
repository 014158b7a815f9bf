"""`turbopack.load(path)`: a model you can `generate` from (what `turbopack run` calls).

    import turbopack
    m = turbopack.load("llama-w4-sm90", kv="int8")
    out = m.generate("The capital of France is", max_new_tokens=32, stream=print)
    out.text, out.stats.decode_tok_s
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from turbopack.errors import TurbopackError
from turbopack.inference.generate import Engine, GenerationStats
from turbopack.inference.loader import Loaded, tokenizer_files
from turbopack.inference.loader import load as load_folder
from turbopack.inference.qlinear import Backend, fuse_projections
from turbopack.inference.sampling import SamplingParams
from turbopack.textenc import text_encoder


class TextStream:
    """Token ids in, new text out, as soon as it is whole (no half UTF-8 characters)."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tok, self.skip = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self.sent = ""

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        text = self.tok.decode(self.ids, skip_special_tokens=self.skip)
        if text.endswith("\ufffd"):  # an unfinished multi-byte character: wait for its next byte
            return ""
        new = text[len(self.sent):] if text.startswith(self.sent) else text
        self.sent = text
        return new


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    stats: GenerationStats


def fuse_model(model: torch.nn.Module) -> int:
    """Fuse q/k/v and gate/up into one matmul each where the modules allow it."""
    return fuse_projections(model)


class TurbopackModel:
    """A loaded model with its tokenizer and decode engine."""

    def __init__(self, loaded: Loaded, kv: str = "bf16", fuse: bool | None = None, use_graphs: bool | None = None,
                 fast: bool | None = None):
        self.loaded = loaded
        self.model = loaded.model
        if fuse if fuse is not None else loaded.device.type == "cuda":
            fuse_model(self.model)
        self.engine = Engine(self.model, kv=kv, use_graphs=use_graphs, fast=fast)
        side = tokenizer_files(loaded.folder)
        self._tok_path, self.bos_id, self.eos_id = side["tokenizer"], side.get("bos_token_id"), side.get("eos_token_id")
        self._tokenizer = None
        self._encoder = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self._tok_path is None:
                raise TurbopackError(f"{self.loaded.folder}: no tokenizer.json; pass token ids to generate_ids instead")
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(self._tok_path))
        return self._tokenizer

    def encode(self, prompt: str) -> list[int]:
        if self._encoder is None:
            self._encoder = text_encoder(self.loaded.folder, self.tokenizer)
        return self._encoder.encode(prompt)

    def stop_ids(self) -> list[int]:
        eos = self.eos_id
        return [] if eos is None else list(eos) if isinstance(eos, list) else [eos]

    def generate_ids(self, ids, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                     seed: int | None = None, stop: bool = True, on_tokens=None):
        """Token ids [B, P] (tensor or nested list) -> (new ids [B, n] tensor, stats)."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        ids = ids[None] if ids.dim() == 1 else ids
        params = SamplingParams(temperature, top_p, seed)
        return self.engine.generate(ids, max_new_tokens, params, self.stop_ids() if stop else (), on_tokens)

    def generate(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                 stream: Callable[[str], None] | None = None, seed: int | None = None, stop: bool = True) -> Generation:
        """Generate a continuation of ``prompt``; ``stream`` receives text pieces as they decode."""
        ts = TextStream(self.tokenizer)
        pieces: list[str] = []

        def on_tokens(toks: list[int]) -> None:
            piece = ts.push(toks[0])
            if piece:
                pieces.append(piece)
                if stream is not None:
                    stream(piece)

        out, stats = self.generate_ids([self.encode(prompt)], max_new_tokens, temperature, top_p, seed, stop, on_tokens)
        return Generation("".join(pieces), out[0].tolist(), stats)

    def __repr__(self) -> str:
        lo = self.loaded
        return (f"TurbopackModel({lo.folder.name}: {lo.kind}, {lo.format or 'bf16'}, backend={lo.backend}, "
                f"arch={lo.arch}, device={lo.device}, kv={self.engine.kv})")


def load(
    path: str | Path,
    device: str | torch.device = "auto",
    dtype: torch.dtype = torch.bfloat16,
    kv: str = "bf16",
    repack: bool = False,
    *,
    arch: str | None = None,
    backend: str | Backend | None = None,
    fuse: bool | None = None,
    use_graphs: bool | None = None,
    fast: bool | None = None,
) -> TurbopackModel:
    """Load a packed, arch-neutral quantized or Hugging Face folder for generation.

    On a GPU the default is the fast decode path: fused q|k|v and gate|up matmuls, the fused glue
    kernels of ``fastpath``, a Triton attention that reads the KV cache as stored, CUDA graphs."""
    loaded = load_folder(path, device, dtype, repack=repack, arch=arch, backend=backend)
    return TurbopackModel(loaded, kv=kv, fuse=fuse, use_graphs=use_graphs, fast=fast)
