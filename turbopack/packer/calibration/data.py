"""Calibration data: text in, a deterministic batch of token windows out.

Sources: a UTF-8 text file, or JSON lines with a string ``"text"`` field per line (``.jsonl``);
by default the bundled public-domain ``train.txt``. The text is tokenized with the model's own
``tokenizer.json`` (the ``tokenizers`` library, no special tokens added) and cut into
``samples`` windows of ``seq_len`` tokens: the token stream is split into non-overlapping slots
after a seeded random offset, and a seeded random choice of slots is taken. So the same file,
sizes and seed always give the same batch, and windows never overlap.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from turbopack.errors import CheckpointError, TurbopackError

JSONL_SUFFIXES = (".jsonl", ".ndjson")


class CalibrationDataError(TurbopackError):
    """The calibration file cannot give the batch asked for."""


@dataclass(frozen=True)
class CalibrationData:
    ids: torch.Tensor  # [samples, seq_len] int64
    source: str
    tokens: int  # tokens in the whole source
    sha256: str

    def describe(self) -> dict:
        n, l = self.ids.shape
        return {"source": self.source, "sha256": self.sha256, "source_tokens": self.tokens, "samples": n, "seq_len": l}


def default_text(name: str = "train.txt") -> Path:
    """A bundled text (turbopack/assets/text), or a one-line error telling how to pass one."""
    try:
        from turbopack.assets import bundled_text

        path = Path(bundled_text(name))
    except (ImportError, AttributeError, FileNotFoundError, TurbopackError):
        path = Path(__file__).resolve().parents[2] / "assets" / "text" / name
    if not path.is_file():
        raise CalibrationDataError(f"{path}: bundled text {name} is missing from this install; pass --calib FILE (text or .jsonl)")
    return path


def read_text(path: Path) -> str:
    """The file's text (JSON lines: the "text" fields joined by blank lines), validated."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CalibrationDataError(f"{path}: no such calibration file; pass an existing text or .jsonl file") from None
    except IsADirectoryError:
        raise CalibrationDataError(f"{path}: is a folder; pass a text or .jsonl file") from None
    if b"\x00" in raw[:1 << 16]:
        raise CalibrationDataError(f"{path}: looks binary (NUL bytes); pass UTF-8 text or .jsonl with a \"text\" field")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CalibrationDataError(f"{path}: not UTF-8 text (byte {e.start}); pass UTF-8 text or .jsonl with a \"text\" field") from None
    if path.suffix.lower() in JSONL_SUFFIXES:
        text = _jsonl_text(path, text)
    if not text.strip():
        raise CalibrationDataError(f"{path}: no text in it; pass a file with calibration text")
    return text


def _jsonl_text(path: Path, text: str) -> str:
    docs = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise CalibrationDataError(f"{path}:{lineno}: not valid JSON; each line must be an object with a \"text\" field") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise CalibrationDataError(f"{path}:{lineno}: no string \"text\" field; each line must be {{\"text\": \"...\"}}")
        docs.append(obj["text"])
    return "\n\n".join(docs)


def load_tokenizer(model_folder: Path):
    path = Path(model_folder) / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; calibration and eval tokenize with the model's tokenizer.json (copy it into the folder)")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise TurbopackError("the `tokenizers` package is needed to tokenize text; pip install tokenizers") from None
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the library raises a bare Exception on a bad file
        raise CheckpointError(f"{path}: cannot be read by `tokenizers` ({str(e).splitlines()[0]}); re-export the tokenizer") from None


def tokenize_file(model_folder: Path, path: Path, vocab: int | None = None) -> torch.Tensor:
    """All tokens of ``path`` (1-D int64), tokenized with the model's tokenizer.json, with the
    special tokens it adds around a text (e.g. a BOS first)."""
    from turbopack.textenc import text_encoder

    encoder = text_encoder(model_folder, load_tokenizer(model_folder))  # framed as the model's tokenizer frames it
    ids = torch.tensor(encoder.encode(read_text(path)), dtype=torch.int64)
    if vocab is not None and ids.numel() and int(ids.max()) >= vocab:
        raise CheckpointError(f"{model_folder}/tokenizer.json: produces token id {int(ids.max())} >= vocab_size {vocab}; "
                              f"the tokenizer does not belong to this model")
    return ids


def calibration_batch(model_folder: Path, calib: str | Path | None, samples: int, seq_len: int, seed: int,
                      vocab: int | None = None) -> CalibrationData:
    """``samples`` x ``seq_len`` token windows of the calibration text, chosen with ``seed``."""
    if samples < 1 or seq_len < 2:
        raise CalibrationDataError(f"--calib-samples {samples} / --calib-seqlen {seq_len}: need at least 1 sample of 2 tokens")
    path = Path(calib) if calib is not None else default_text()
    ids = tokenize_file(model_folder, path, vocab)
    need = samples * seq_len
    if ids.numel() < need:
        raise CalibrationDataError(f"{path}: {ids.numel()} tokens, too short for {samples} samples x {seq_len} tokens "
                                   f"({need}); pass more text or lower --calib-samples/--calib-seqlen")
    gen = torch.Generator().manual_seed(seed)
    slots = ids.numel() // seq_len
    offset = int(torch.randint(0, ids.numel() - slots * seq_len + 1, (1,), generator=gen))
    chosen = torch.randperm(slots, generator=gen)[:samples]
    windows = ids[offset:offset + slots * seq_len].view(slots, seq_len)[chosen]
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return CalibrationData(windows.contiguous(), str(path), int(ids.numel()), sha)
