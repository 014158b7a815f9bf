"""Calibration data: text in, a deterministic batch of token windows out.

Where the text comes from (a file, the model's own samples, a bundled text, a Hub dataset; and
which is the default for a model) is sources.py. A file is UTF-8 text, or JSON lines with a
string ``"text"`` (or a chat ``"messages"`` list, chat.py) per line (``.jsonl``). The text is
tokenized with the model's own ``tokenizer.json`` (the ``tokenizers`` library, no special tokens
added) and cut into
``samples`` windows of ``seq_len`` tokens: the token stream is split into non-overlapping slots
after a seeded random offset, and a seeded random choice of slots is taken. So the same file,
sizes and seed always give the same batch, and windows never overlap.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from turbopack.errors import CheckpointError, TurbopackError
from turbopack.packer.calibration.chat import check_messages
from turbopack.textenc import text_encoder

JSONL_SUFFIXES = (".jsonl", ".ndjson")


class CalibrationDataError(TurbopackError):
    """The calibration file cannot give the batch asked for."""


@dataclass(frozen=True)
class CalibrationData:
    ids: torch.Tensor  # [samples, seq_len] int64
    source: str
    tokens: int  # tokens in the whole source
    sha256: str
    kind: str = "file"  # sources.SourceKind value
    chosen_by: str = "--calib"
    details: dict = field(default_factory=dict)

    def describe(self) -> dict:
        n, seq = self.ids.shape
        return {"source": self.source, "kind": self.kind, "chosen_by": self.chosen_by, "sha256": self.sha256,
                "source_tokens": self.tokens, "samples": n, "seq_len": seq, **self.details}

    def summary(self) -> str:
        """One line for the run's summary: what the model was calibrated on, and why that."""
        n, seq = self.ids.shape
        return f"calibrated on {self.source}, {n} x {seq} tokens ({self.chosen_by})"


def default_text(name: str = "train.txt") -> Path:
    """A bundled text (turbopack/assets/text), or a one-line error telling how to pass one."""
    try:
        from turbopack.assets import bundled_text

        path = Path(bundled_text(name))
    except (ImportError, AttributeError, FileNotFoundError, TurbopackError):
        path = Path(__file__).resolve().parents[2] / "assets" / "text" / name
    if not path.is_file():
        raise CalibrationDataError(
            f"{path}: bundled text {name} is missing from this install; pass --calib FILE (text or .jsonl)"
        )
    return path


def read_text(path: Path, render: Callable[[list], str] | None = None) -> str:
    """The file's text (JSON lines: each record's "text", or its "messages" rendered by ``render``,
    joined by blank lines), validated."""
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
        raise CalibrationDataError(
            f'{path}: not UTF-8 text (byte {e.start}); pass UTF-8 text or .jsonl with a "text" field'
        ) from None
    if path.suffix.lower() in JSONL_SUFFIXES:
        text = "\n\n".join(render_records(jsonl_records(path, text), render))
    if not text.strip():
        raise CalibrationDataError(f"{path}: no text in it; pass a file with calibration text")
    return text


def jsonl_records(path: Path, text: str) -> list[str | list]:
    """Each line's "text" (a string) or "messages" (a conversation: a list of turns)."""
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise CalibrationDataError(
                f'{path}:{lineno}: not valid JSON; each line must be an object with a "text" field'
            ) from None
        if isinstance(obj, dict) and isinstance(obj.get("text"), str):
            records.append(obj["text"])
        elif isinstance(obj, dict) and "messages" in obj:
            records.append(check_messages(obj["messages"], f"{path}:{lineno}"))
        else:
            raise CalibrationDataError(f"{path}:{lineno}: no string \"text\" field (or \"messages\" list); "
                                       f"each line must be {{\"text\": \"...\"}} or {{\"messages\": [...]}}")
    return records


def render_records(records: list[str | list], render: Callable[[list], str] | None) -> list[str]:
    """Texts as they are; conversations through ``render`` (the chat template), or role: content lines."""
    plain = lambda msgs: "\n".join(f"{m['role']}: {m['content']}" for m in msgs)  # noqa: E731
    return [r if isinstance(r, str) else (render or plain)(r) for r in records]


def load_tokenizer(model_folder: Path):
    path = Path(model_folder) / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing; calibration and eval tokenize with the model's tokenizer.json (copy it into the folder)"
        )
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise TurbopackError("the `tokenizers` package is needed to tokenize text; pip install tokenizers") from None
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the library raises a bare Exception on a bad file
        raise CheckpointError(
            f"{path}: cannot be read by `tokenizers` ({str(e).splitlines()[0]}); re-export the tokenizer"
        ) from None


def encode_text(
    model_folder: Path, text: str, vocab: int | None = None, where: str = "calibration text"
) -> torch.Tensor:
    """All tokens of ``text`` (1-D int64), with the model's tokenizer.json and the special tokens it
    adds around a text (e.g. a BOS first), as the model's own tokenizer frames it."""
    encoder = text_encoder(model_folder, load_tokenizer(model_folder))
    ids = torch.tensor(encoder.encode(text), dtype=torch.int64)
    if vocab is not None and ids.numel() and int(ids.max()) >= vocab:
        raise CheckpointError(
            f"{model_folder}/tokenizer.json: produces token id {int(ids.max())} >= vocab_size {vocab}; "
            f"the tokenizer does not belong to this model"
        )
    return ids


def tokenize_file(model_folder: Path, path: Path, vocab: int | None = None) -> torch.Tensor:
    """All tokens of ``path`` (1-D int64), tokenized with the model's tokenizer.json."""
    return encode_text(model_folder, read_text(path), vocab, str(path))


def calibration_batch(model_folder: Path, calib: str | Path | None, samples: int, seq_len: int, seed: int,
                      vocab: int | None = None, device: torch.device | None = None,
                      log: Callable[[str], None] | None = None) -> CalibrationData:
    """``samples`` x ``seq_len`` token windows of the calibration source (sources.py), chosen with ``seed``."""
    from turbopack.packer.calibration import sources

    if samples < 1 or seq_len < 2:
        raise CalibrationDataError(
            f"--calib-samples {samples} / --calib-seqlen {seq_len}: need at least 1 sample of 2 tokens"
        )
    source = sources.parse(calib, Path(model_folder))
    req = sources.Request(Path(model_folder), samples, seq_len, seed, vocab, device, log or (lambda msg: None))
    stream = sources.load(source, req)
    ids = stream.ids
    need = samples * seq_len
    if ids.numel() < need:
        raise CalibrationDataError(
            f"{stream.label}: {ids.numel()} tokens, too short for {samples} samples x {seq_len} tokens "
            f"({need}); pass more text or lower --calib-samples/--calib-seqlen"
        )
    gen = torch.Generator().manual_seed(seed)
    slots = ids.numel() // seq_len
    offset = int(torch.randint(0, ids.numel() - slots * seq_len + 1, (1,), generator=gen))
    chosen = torch.randperm(slots, generator=gen)[:samples]
    windows = ids[offset:offset + slots * seq_len].view(slots, seq_len)[chosen]
    return CalibrationData(windows.contiguous(), stream.label, int(ids.numel()), stream.sha256,
                           kind=source.kind.value, chosen_by=source.chosen_by, details=stream.details)
