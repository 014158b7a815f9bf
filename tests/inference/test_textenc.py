"""Prompts and calibration/eval text are framed with the special tokens the model's own tokenizer
adds (turbopack.textenc), compared with transformers' AutoTokenizer on the same folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from turbopack.cli.app import main
from turbopack.packer.calibration.data import tokenize_file

ASSET = Path(__file__).resolve().parents[2] / "turbopack" / "assets" / "tiny-llama"
BOS_TEMPLATE = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<|bos|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<|bos|>": {"id": "<|bos|>", "ids": [0], "tokens": ["<|bos|>"]}}}


def _model(tmp_path: Path, name: str, post_processor="keep", **tokenizer_config) -> Path:
    folder = tmp_path / name
    shutil.copytree(ASSET, folder)
    if post_processor != "keep":
        tj = json.loads((folder / "tokenizer.json").read_text())
        tj["post_processor"] = post_processor
        (folder / "tokenizer.json").write_text(json.dumps(tj))
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**tc, **tokenizer_config}))
    return folder


def _hf_ids(folder: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)(text)["input_ids"]


def _run_prompt_ids(capsys, folder: Path, prompt: str) -> list[int]:
    assert main(["run", str(folder), "--prompt", prompt, "-n", "2", "--device", "cpu", "--json"]) == 0
    return json.loads(capsys.readouterr().out)["prompt_ids"]


def test_bundled_tokenizer_adds_no_bos_and_run_follows_it(capsys):
    """The bundled model's tokenizer.json frames nothing (it was trained on unframed text):
    `turbopack run` feeds exactly transformers' ids, no <|bos|> although bos_token_id is 0."""
    tj = json.loads((ASSET / "tokenizer.json").read_text())
    assert all("SpecialToken" not in piece for piece in tj["post_processor"]["single"])
    want = _hf_ids(ASSET, "ROMEO:")
    assert want and want[0] != 0
    assert _run_prompt_ids(capsys, ASSET, "ROMEO:") == want


def test_a_tokenizer_that_adds_bos_gets_it(tmp_path, capsys):
    folder = _model(tmp_path, "bos", BOS_TEMPLATE)
    want = _hf_ids(folder, "ROMEO:")
    assert want[0] == 0
    assert _run_prompt_ids(capsys, folder, "ROMEO:") == want


def test_calibration_and_eval_text_framed_as_the_tokenizer_frames_it(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("Now is the winter of our discontent.\n")
    plain = tokenize_file(ASSET, text).tolist()
    assert plain == _hf_ids(ASSET, text.read_text())
    from tokenizers import Tokenizer  # the bundled model's calibration ids are what they were

    assert (
        plain
        == Tokenizer.from_file(str(ASSET / "tokenizer.json")).encode(text.read_text(), add_special_tokens=False).ids
    )
    framed = tokenize_file(_model(tmp_path, "bos", BOS_TEMPLATE), text).tolist()
    assert framed == [0, *plain]


@pytest.mark.parametrize("key,bos", [(None, False), (True, True), (False, False)])
def test_config_key_applies_only_without_a_post_processor(tmp_path, key, bos):
    from tokenizers import Tokenizer

    from turbopack.textenc import text_encoder

    extra = {} if key is None else {"add_bos_token": key}
    folder = _model(tmp_path, "nopp", None, **extra)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = text_encoder(folder, tok).encode("ROMEO:")
    assert ids == ([0] if bos else []) + tok.encode("ROMEO:", add_special_tokens=False).ids
    # with a post-processor the key is ignored, as transformers' TokenizersBackend ignores it
    kept = _model(tmp_path, "pp", "keep", **extra)
    assert text_encoder(kept, tok).encode("ROMEO:") == _hf_ids(kept, "ROMEO:")
