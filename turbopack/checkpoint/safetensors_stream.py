"""Streaming safetensors writer and a validating header reader.

Why our own writer: ``safetensors.torch.save_file`` needs every tensor of a shard in memory at
once. The safetensors layout (8-byte little-endian header length, a JSON header with each
tensor's dtype, shape and ``data_offsets`` relative to the data section, then raw little-endian
bytes) lets us write the header first because every output shape is known before any weight is
quantized; tensor bytes are then written in row chunks at their offsets, so peak memory is one
chunk, not one shard. Files written here are read back by the ``safetensors`` library.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from turbopack.errors import CheckpointError

ST_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
TORCH_DTYPES: dict[str, torch.dtype] = {v: k for k, v in ST_DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


FIX = "re-download or re-export it"


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    # json.loads keeps the last of two equal keys; a header naming a tensor twice is corrupt.
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(ValueError):
    pass


def read_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Parse and validate a safetensors header without loading data: (tensors, __metadata__).

    As strict as the ``safetensors`` library (so a file accepted here also loads there), and
    stricter where it is lenient: a tensor name given twice is an error, not "the last one wins"."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes); {FIX}")
            (n,) = struct.unpack("<Q", raw)
            if n > min(MAX_HEADER, size - 8):
                raise CheckpointError(
                    f"{path}: header length {n} runs past the end of the file ({size} bytes); the file is truncated or "
                    f"not safetensors, {FIX}"
                )
            header = json.loads(f.read(n), object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise CheckpointError(f"{path}: the header names {e.args[0]!r} twice; the file is corrupt, {FIX}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(
            f"{path}: safetensors header is not valid JSON ({e.__class__.__name__}); the file is corrupt, {FIX}"
        ) from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object; the file is corrupt, {FIX}")
    meta = header.pop("__metadata__", None)
    meta = {} if meta is None else meta
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path}: __metadata__ must map names to strings; the file is corrupt, {FIX}")
    tensors = _validate_entries(path, header, size - 8 - n)
    return tensors, dict(meta)


def _is_count(v: object) -> bool:
    return type(v) is int and v >= 0  # JSON true/1.0 are not sizes (safetensors rejects them too)


def _fits(shape: tuple[int, ...], dtype: torch.dtype) -> bool:
    """Every partial product of the shape (times the item size) fits in int64, as torch and the
    safetensors library (which multiplies left to right, checked) need."""
    size = dtype.itemsize
    for d in shape:
        size *= d
        if size >= 2**63:
            return False
    return True


def _validate_entries(path: Path, header: dict, data_size: int) -> dict[str, TensorEntry]:
    out: dict[str, TensorEntry] = {}
    spans = []
    for name, e in header.items():
        try:
            dtype = TORCH_DTYPES[e["dtype"]]
            if not isinstance(e["shape"], list) or not isinstance(e["data_offsets"], list):
                raise TypeError
            shape, offsets = tuple(e["shape"]), tuple(e["data_offsets"])
            begin, end = offsets
            if not all(map(_is_count, shape + offsets)) or not _fits(shape, dtype):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(
                f"{path}: tensor {name!r} has a malformed header entry (dtype/shape/data_offsets); the file is "
                f"corrupt, {FIX}"
            ) from None
        entry = TensorEntry(name, dtype, shape)
        if not begin <= end <= data_size:
            raise CheckpointError(
                f"{path}: tensor {name!r} data offsets [{begin}, {end}) are out of range (data section {data_size} "
                f"bytes); the file is truncated or corrupt, {FIX}"
            )
        if end - begin != entry.nbytes:
            raise CheckpointError(
                f"{path}: tensor {name!r} is {e['dtype']} {list(shape)} = {entry.nbytes} bytes but its offsets span "
                f"{end - begin}; the file is corrupt, {FIX}"
            )
        spans.append((begin, end, name))
        out[name] = entry
    _check_coverage(path, sorted(spans), data_size)
    return out


def _check_coverage(path: Path, spans: list[tuple[int, int, str]], data_size: int) -> None:
    """Tensors must tile the data section exactly: no overlap (aliases included), no hole, nothing
    after the last."""
    for (_, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise CheckpointError(f"{path}: tensors {n0!r} and {n1!r} overlap; the file is corrupt, {FIX}")
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            raise CheckpointError(
                f"{path}: {begin - pos} unused bytes before tensor {name!r}; the file is corrupt, {FIX}"
            )
        pos = end
    if pos != data_size:
        raise CheckpointError(f"{path}: {data_size - pos} bytes after the last tensor; the file is corrupt, {FIX}")


def sha256_file(path: Path, chunk: int = 16 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class StreamingWriter:
    """Writes one safetensors file whose tensor list is fixed up front; data arrives in row chunks."""

    def __init__(self, path: Path, entries: list[TensorEntry], metadata: dict[str, str] | None = None):
        self.path = path
        self.entries = {e.name: e for e in entries}
        header: dict = {"__metadata__": dict(metadata or {})} if metadata else {}
        self.offsets: dict[str, int] = {}
        pos = 0
        for e in entries:
            header[e.name] = {
                "dtype": ST_DTYPES[e.dtype],
                "shape": list(e.shape),
                "data_offsets": [pos, pos + e.nbytes],
            }
            self.offsets[e.name] = pos
            pos += e.nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # data section starts 8-byte aligned
        self.data_start = 8 + len(blob)
        self.size = self.data_start + pos
        self._f = open(path, "wb")
        try:
            self._f.write(struct.pack("<Q", len(blob)) + blob)
            self._f.truncate(self.size)
        except OSError as e:
            self._f.close()
            raise self._named(e) from None
        self._written: dict[str, int] = {e.name: 0 for e in entries}

    def write_rows(self, name: str, row_start: int, chunk: torch.Tensor) -> None:
        """Write rows [row_start, row_start + len(chunk)) of tensor ``name``."""
        e = self.entries[name]
        if chunk.dtype != e.dtype or tuple(chunk.shape[1:]) != e.shape[1:]:
            raise ValueError(f"{name}: chunk {chunk.dtype} {list(chunk.shape)} does not fit {e.dtype} {list(e.shape)}")
        row_bytes = e.nbytes // e.shape[0] if e.shape and e.shape[0] else e.nbytes
        data = chunk.contiguous().view(torch.uint8).numpy().tobytes() if chunk.numel() else b""
        try:
            self._f.seek(self.data_start + self.offsets[name] + row_start * row_bytes)
            self._f.write(data)
        except OSError as e:
            raise self._named(e) from None
        self._written[name] += len(data)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self.write_rows(name, 0, tensor.reshape(self.entries[name].shape) if tensor.dim() == 0 else tensor)

    @property
    def complete(self) -> bool:
        """Every tensor has had all its bytes written (what :meth:`close` checks)."""
        return all(self._written[n] >= e.nbytes for n, e in self.entries.items())

    def close(self) -> None:
        """Flush and fsync; fails if any tensor was left unwritten (a hole would read as zeros)."""
        short = [n for n, e in self.entries.items() if self._written[n] < e.nbytes]
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            with contextlib.suppress(OSError):  # close() would flush (and fail) again
                self._f.close()
            raise self._named(e) from None
        self._f.close()
        if short:
            raise RuntimeError(f"{self.path}: tensors never fully written: {short[:5]}")

    def _named(self, e: OSError) -> OSError:
        """The OS error of a write (ENOSPC has no file name) with this file named."""
        return e if e.filename else OSError(e.errno, e.strerror, str(self.path))

    def __enter__(self) -> StreamingWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            with contextlib.suppress(OSError):  # keep the error that got us here
                self._f.close()
