"""A sliding window that is not a multiple of the cache step (256): the KV cache is sized to the
window, so `turbopack run` works for any prompt that fits in it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from turbopack.cli.app import main

ASSET = Path(__file__).resolve().parents[2] / "turbopack" / "assets" / "tiny-llama"


@pytest.fixture(scope="module")
def mistral32(tmp_path_factory) -> Path:
    from tinymodels import make_tiny_model

    folder = make_tiny_model(
        tmp_path_factory.mktemp("m") / "mistral", arch="mistral", vocab_size=2048, sliding_window=32
    )
    for side in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(ASSET / side, folder / side)
    return folder


def test_run_with_window_32(mistral32, capsys):
    assert main(["run", str(mistral32), "--prompt", "ROMEO: what", "-n", "8", "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["token_ids"]) == 8 and len(out["prompt_ids"]) + 8 <= 32
    # within the window sliding attention is full attention: transformers' greedy tokens
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(mistral32, dtype=torch.float32)
    ids = torch.tensor([out["prompt_ids"]])
    want = hf.generate(ids, max_new_tokens=8, do_sample=False, min_new_tokens=8)[0, ids.shape[1]:].tolist()
    assert out["token_ids"] == want


def test_beyond_the_window_is_one_line(mistral32, capsys):
    assert main(["run", str(mistral32), "--prompt", "ROMEO:", "-n", "40", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sliding_window 32" in err and "--max-new-tokens" in err
