"""Text to token ids exactly as the model's own tokenizer does it: one rule for every place that
encodes text (run, generate, eval, calibration data).

1. tokenizer.json's post-processor decides which special tokens frame a text (a Llama-3
   TemplateProcessing adds <|begin_of_text|>; a ByteLevel one, or a template without special
   tokens, adds none). The `tokenizers` library applies it with ``add_special_tokens=True``;
   transformers' TokenizersBackend does the same and ignores the config keys.
2. Only when tokenizer.json has no post-processor: ``add_bos_token: true`` in
   tokenizer_config.json prepends the BOS token (the key Llama-class tokenizers build their
   post-processor from). No key, no BOS: a BOS the tokenizer does not add is a different prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from turbopack.errors import CheckpointError


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({str(e)[:80]}); fix or re-download it") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object; fix or re-download it")
    return data


def _bos_from_config(folder: Path, tokenizer) -> int | None:
    """The BOS id that tokenizer_config.json's ``add_bos_token: true`` asks for, if it applies."""
    tj, tc = folder / "tokenizer.json", folder / "tokenizer_config.json"
    if not tc.is_file() or not tj.is_file() or _read(tj).get("post_processor") is not None:
        return None
    cfg = _read(tc)
    if cfg.get("add_bos_token") is not True:
        return None
    bos = cfg.get("bos_token")
    bos = bos.get("content") if isinstance(bos, dict) else bos
    return tokenizer.token_to_id(bos) if isinstance(bos, str) else None


@dataclass(frozen=True)
class TextEncoder:
    tokenizer: object  # tokenizers.Tokenizer
    config_bos: int | None = None

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=True).ids
        if self.config_bos is not None and (not ids or ids[0] != self.config_bos):
            ids = [self.config_bos, *ids]
        return ids


def text_encoder(folder: str | Path, tokenizer) -> TextEncoder:
    """The encoder of the model in ``folder`` around its already loaded tokenizer.json."""
    return TextEncoder(tokenizer, _bos_from_config(Path(folder), tokenizer))
