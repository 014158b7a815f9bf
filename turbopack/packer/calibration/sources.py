"""Where calibration text comes from: the ``--calib`` value (or the model's default) -> a token stream.

    --calib FILE             a UTF-8 text file, or .jsonl with "text" (or chat "messages") per line
    --calib self             text the model generates itself from short, varied prompts (offline)
    --calib bundled[:NAME]   a text bundled with turbopack (default train.txt: Shakespeare)
    --calib hf[:DATASET[:SPLIT[:COLUMN]]]   a Hugging Face Hub dataset (needs `datasets`, network)
    (none)                   the model's declared source, else ``self``

Why ``self`` is the default: it needs no network and no file, and it is text *this* model finds
likely, whatever its language, domain or tokenizer (data-free quantization work calibrates on
such samples); a fixed bundled text fits only the models trained on it. The default does not
switch to the Hub when online, so the same command gives the same weights on any machine.

A model declares its own default with a ``turbopack_calibration`` key in ``config.json`` (values
``bundled:NAME``, ``self`` or ``hf:...``; never a file path, as a downloaded model's config is not
trusted to point into the local disk). The bundled model declares ``bundled:train``, the text it
was trained on: that, not its folder name, is how it is recognised, so a copy (or a rewritten
same-function model, as ``benchmarks/quality.py --plant-outliers`` makes) keeps its text.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from turbopack.packer.calibration.data import CalibrationDataError, default_text, encode_text, read_text
from turbopack.registry import Registry

CONFIG_KEY = "turbopack_calibration"


class SourceKind(str, enum.Enum):
    FILE = "file"
    SELF = "self"
    BUNDLED = "bundled"
    HF = "hf"


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    arg: str  # file path, bundled text name or Hub dataset spec ("" for self / the default dataset)
    chosen_by: str  # why this source: "--calib", the model's config.json, or the default


@dataclass(frozen=True)
class Request:
    """What a source needs to produce its tokens."""

    model_folder: Path
    samples: int
    seq_len: int
    seed: int
    vocab: int | None = None
    device: torch.device | None = None
    log: Callable[[str], None] = lambda msg: None

    @property
    def need(self) -> int:
        return self.samples * self.seq_len


@dataclass(frozen=True)
class Stream:
    ids: torch.Tensor  # 1-D int64: the whole source, tokenized
    label: str  # what the run's summary and the manifest say the data was
    sha256: str
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SourceSpec:
    load: Callable[[Source, Request], Stream]
    help: str


SOURCES: Registry[SourceSpec] = Registry("calibration source")


def parse(calib: str | Path | None, model_folder: Path) -> Source:
    """The --calib value (or, without one, the model's declared source, else self-generated text)."""
    if calib is None:
        declared = _declared(model_folder)
        if declared is not None:
            return declared
        return Source(SourceKind.SELF, "", "default (the model declares no calibration text)")
    text = str(calib)
    head, sep, rest = text.partition(":")
    if head in (SourceKind.SELF.value, SourceKind.BUNDLED.value, SourceKind.HF.value) and (
        sep or not Path(text).is_file()
    ):
        if head == SourceKind.SELF.value and rest:
            raise CalibrationDataError(f"--calib {text}: `self` takes no argument; use --calib self")
        return Source(SourceKind(head), rest, "--calib")
    return Source(SourceKind.FILE, text, "--calib")


def _declared(model_folder: Path) -> Source | None:
    path = Path(model_folder) / "config.json"
    try:
        value = json.loads(path.read_text()).get(CONFIG_KEY)
    except (OSError, json.JSONDecodeError, AttributeError):
        return None  # the checkpoint reader reports a bad config.json in its own words
    if value is None:
        return None
    head, _, rest = str(value).partition(":")
    if head not in (SourceKind.SELF.value, SourceKind.BUNDLED.value, SourceKind.HF.value):
        raise CalibrationDataError(f"{path}: {CONFIG_KEY} {value!r} must be bundled:NAME, self or hf:DATASET; "
                                   f"fix it or pass --calib")
    return Source(SourceKind(head), rest, f"the model's config.json ({CONFIG_KEY})")


def load(source: Source, req: Request) -> Stream:
    return SOURCES.get(source.kind).load(source, req)


def _sha_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _load_file(source: Source, req: Request) -> Stream:
    from turbopack.packer.calibration.chat import renderer

    path = Path(source.arg)
    render, has_template = renderer(req.model_folder)
    used = []
    text = read_text(path, lambda msgs: used.append(1) or render(msgs))
    details = {"conversations": len(used), "chat_template": bool(used) and has_template} if used else {}
    return Stream(
        encode_text(req.model_folder, text, req.vocab, str(path)), str(path), _sha_of(path.read_bytes()), details
    )


def _load_bundled(source: Source, req: Request) -> Stream:
    if not re.fullmatch(r"[A-Za-z0-9_-]+(\.txt)?", source.arg or "train"):  # a name, never a path
        raise CalibrationDataError(
            f"bundled:{source.arg} ({source.chosen_by}): not a bundled text name; use bundled:train"
        )
    path = default_text(source.arg or "train.txt")
    text = read_text(path)
    return Stream(encode_text(req.model_folder, text, req.vocab, str(path)), f"bundled:{path.stem} ({path.name})",
                  _sha_of(path.read_bytes()))


def _load_self(source: Source, req: Request) -> Stream:
    from turbopack.packer.calibration.selfgen import self_generated

    return self_generated(req)


def _load_hf(source: Source, req: Request) -> Stream:
    from turbopack.packer.calibration.hubdata import hub_stream

    return hub_stream(source.arg, req)


SOURCES.register(SourceKind.FILE, SourceSpec(_load_file, 'a text file, or .jsonl with "text" or "messages" per line'))
SOURCES.register(SourceKind.SELF, SourceSpec(_load_self, "text the model generates itself from short varied prompts"))
SOURCES.register(SourceKind.BUNDLED, SourceSpec(_load_bundled, "a bundled text (train: Shakespeare)"))
SOURCES.register(SourceKind.HF, SourceSpec(_load_hf, "a Hugging Face Hub dataset via `datasets`"))
