"""Fixtures: a tiny random Llama with a word-level tokenizer, and calibration text for it."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from tinymodels import write_word_tokenizer

WORDS = [f"w{i}" for i in range(120)]


def write_text(path: Path, n_words: int, seed: int = 0) -> Path:
    """Words from a fixed list with some structure (a random walk), 12 words a line."""
    rng = random.Random(seed)
    i, out = 0, []
    for _ in range(n_words):
        i = (i + rng.choice((-2, -1, 1, 1, 3))) % len(WORDS)
        out.append(WORDS[i])
    lines = [" ".join(out[j:j + 12]) for j in range(0, len(out), 12)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_tokenizer(folder: Path) -> None:
    write_word_tokenizer(folder, len(WORDS))


@pytest.fixture(scope="session")
def calib_model(tiny_llama, tmp_path_factory) -> Path:
    """The shared tiny random Llama (hidden 64, GQA 4/2 heads, intermediate 96), plus a tokenizer."""
    pytest.importorskip("tokenizers")
    folder = tmp_path_factory.mktemp("calib") / "llama"
    shutil.copytree(tiny_llama, folder)
    write_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def calib_text(tmp_path_factory) -> Path:
    return write_text(tmp_path_factory.mktemp("text") / "calib.txt", 6000)
