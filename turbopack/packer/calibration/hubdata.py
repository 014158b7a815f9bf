"""``--calib hf[:DATASET[:SPLIT[:COLUMN]]]``: calibration text from a Hugging Face Hub dataset.

Needs the optional ``datasets`` package and the network (or its local cache: ``HF_DATASETS_OFFLINE=1``
reads what an earlier run downloaded). Rows are streamed in order and taken until the text holds
the tokens the batch needs (with 25% spare for the windowing), so a large dataset is not downloaded
whole. The column is COLUMN, else ``text``, else ``messages`` (conversations, rendered with the
model's chat template: chat.py).

``--calib hf`` alone uses the documented defaults below: broad web text, the validation sample of
the Pile that AutoAWQ calibrates on; for a model whose tokenizer has a chat template, UltraChat
conversations (what llm-compressor's examples use for instruct models).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from turbopack.packer.calibration.chat import chat_template, check_messages, renderer
from turbopack.packer.calibration.data import CalibrationDataError, encode_text, load_tokenizer

DEFAULT_TEXT = "mit-han-lab/pile-val-backup:validation:text"
DEFAULT_CHAT = "HuggingFaceH4/ultrachat_200k:train_sft:messages"
SPARE = 1.25
MAX_ROWS = 200_000


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """DATASET[:SPLIT[:COLUMN]] -> (dataset, split, column or None)."""
    parts = spec.split(":")
    if len(parts) > 3 or not parts[0]:
        raise CalibrationDataError(f"--calib hf:{spec}: expected hf:DATASET[:SPLIT[:COLUMN]], e.g. hf:{DEFAULT_TEXT}")
    return (
        parts[0],
        (parts[1] if len(parts) > 1 and parts[1] else "train"),
        (parts[2] if len(parts) > 2 and parts[2] else None),
    )


def rows(dataset: str, split: str) -> Iterable[dict[str, Any]]:
    """The split's rows, streamed (the one function that touches the network; tests replace it)."""
    try:
        import datasets
    except ImportError:
        raise CalibrationDataError(f"--calib hf:{dataset}: needs the optional `datasets` package; "
                                   f"pip install datasets (or pass --calib FILE / --calib self)") from None
    try:
        return iter(datasets.load_dataset(dataset, split=split, streaming=True))
    except Exception as e:  # network, unknown dataset or split: all mean the same to the user
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CalibrationDataError(
            f"--calib hf:{dataset}:{split}: cannot be loaded ({first}); check the name and split, "
            f"the network, or pass --calib FILE / --calib self"
        ) from None


def _column(row: dict, column: str | None, where: str) -> str:
    if column is not None:
        if column not in row:
            raise CalibrationDataError(
                f"{where}: no column {column!r} (columns: {', '.join(row)}); pass hf:DATASET:SPLIT:COLUMN"
            )
        return column
    for name in ("text", "messages"):
        if name in row:
            return name
    raise CalibrationDataError(f"{where}: no \"text\" or \"messages\" column (columns: {', '.join(row)}); "
                               f"name one: hf:DATASET:SPLIT:COLUMN")


def hub_stream(spec: str, req):
    """A sources.Stream of enough of the dataset's text for the batch."""
    from turbopack.packer.calibration.sources import Stream

    spec = spec or (DEFAULT_CHAT if chat_template(req.model_folder) else DEFAULT_TEXT)
    dataset, split, column = parse_spec(spec)
    where = f"--calib hf:{dataset}:{split}"
    render, has_template = renderer(req.model_folder)
    tok = load_tokenizer(req.model_folder)  # counts tokens as rows arrive; the ids come from encode_text
    texts, tokens, conversations = [], 0, 0
    for n, row in enumerate(rows(dataset, split)):
        if n >= MAX_ROWS or tokens >= req.need * SPARE:
            break
        column = column or _column(row, None, where)
        value = row.get(column) if isinstance(row, dict) else None
        if isinstance(value, str):
            text = value
        elif isinstance(value, list):
            text, conversations = render(check_messages(value, f"{where} row {n}")), conversations + 1
        else:
            _column(row, column, where)  # names the missing column
            raise CalibrationDataError(f"{where} row {n}: column {column!r} is neither text nor a list of messages")
        if text.strip():
            texts.append(text)
            tokens += len(tok.encode(text, add_special_tokens=False).ids)
    body = "\n\n".join(texts)
    ids = encode_text(req.model_folder, body, req.vocab, where)
    details = {"dataset": dataset, "split": split, "column": column, "rows": len(texts)}
    if conversations:
        details.update(conversations=conversations, chat_template=has_template)
    return Stream(ids, f"hf:{dataset}:{split}:{column}", hashlib.sha256(body.encode()).hexdigest(), details)
