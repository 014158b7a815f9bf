"""Calibration sources: --calib FILE | self | bundled[:NAME] | hf:DATASET[:SPLIT[:COLUMN]], the model's
declared default (how the bundled model is recognised), self-generated text, chat conversations,
and what the manifest and the summary say. No network: the Hub is a monkeypatched row stream."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from turbopack.assets import bundled_model_dir
from turbopack.checkpoint import MANIFEST_NAME
from turbopack.cli.app import main
from turbopack.errors import TurbopackError
from turbopack.packer.calibration import hubdata, sources
from turbopack.packer.calibration.data import CalibrationDataError, calibration_batch
from turbopack.packer.calibration.selfgen import prompt_ids
from turbopack.packer.calibration.sources import SourceKind

WORDS = [f"w{i}" for i in range(120)]  # the calib_model fixture tokenizer's words (conftest.py)

# A ChatML-like template, written for this test.
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture()
def chat_model(calib_model, tmp_path) -> Path:
    folder = tmp_path / "chat"
    shutil.copytree(calib_model, folder)
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "w0", "eos_token": "w1", "chat_template": TEMPLATE})
    )
    return folder


def words(n: int, start: int = 0) -> str:
    return " ".join(WORDS[(start + 7 * i) % len(WORDS)] for i in range(n))


@pytest.mark.parametrize(
    "calib,kind,arg",
    [
        ("self", SourceKind.SELF, ""),
        ("bundled", SourceKind.BUNDLED, ""),
        ("bundled:heldout", SourceKind.BUNDLED, "heldout"),
        ("hf", SourceKind.HF, ""),
        ("hf:org/data:test:body", SourceKind.HF, "org/data:test:body"),
        ("some/file.txt", SourceKind.FILE, "some/file.txt"),
    ],
)
def test_parse_calib_values(calib_model, calib, kind, arg):
    src = sources.parse(calib, calib_model)
    assert (src.kind, src.arg, src.chosen_by) == (kind, arg, "--calib")


def test_a_file_named_like_a_keyword_is_a_file(calib_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "self").write_text("w1 w2")
    assert sources.parse("self", calib_model).kind is SourceKind.FILE
    assert sources.parse("self:", calib_model).kind is SourceKind.SELF


def test_default_is_self_generated_unless_the_model_declares_its_text(calib_model, tmp_path):
    assert sources.parse(None, calib_model).kind is SourceKind.SELF
    # the bundled model is recognised by the key in its config.json, so a copy under any name keeps its text
    copy = tmp_path / "renamed"
    shutil.copytree(bundled_model_dir(), copy, ignore=shutil.ignore_patterns("*.safetensors"))
    src = sources.parse(None, copy)
    assert (src.kind, src.arg) == (SourceKind.BUNDLED, "train") and "config.json" in src.chosen_by
    cfg = json.loads((copy / "config.json").read_text())
    del cfg[sources.CONFIG_KEY]
    (copy / "config.json").write_text(json.dumps(cfg))
    assert sources.parse(None, copy).kind is SourceKind.SELF


@pytest.mark.parametrize(
    "value", ["/etc/passwd", "file:x.txt", "gopher", "bundled:../../../etc/hosts", "bundled:/etc/x.txt"]
)
def test_a_declared_source_may_not_be_a_path(calib_model, tmp_path, value):
    folder = tmp_path / "m"
    shutil.copytree(calib_model, folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, sources.CONFIG_KEY: value}))
    with pytest.raises(CalibrationDataError, match="turbopack_calibration|not a bundled text name") as err:
        calibration_batch(folder, None, 1, 2, seed=0)
    assert "\n" not in str(err.value)


def test_self_generated_batch(calib_model):
    a = calibration_batch(calib_model, None, 6, 24, seed=0)
    assert a.ids.shape == (6, 24) and a.kind == "self" and a.chosen_by.startswith("default")
    assert int(a.ids.max()) < 128 and int(a.ids.min()) >= 0
    assert torch.equal(a.ids, calibration_batch(calib_model, "self", 6, 24, seed=0).ids)  # deterministic
    assert not torch.equal(a.ids, calibration_batch(calib_model, "self", 6, 24, seed=1).ids)
    # every window opens with one of the prompts (BOS first when the config has one), then sampled tokens
    starts = {tuple(p) for p in prompt_ids(calib_model, 128)}
    for row in a.ids.tolist():
        assert any(tuple(row[:len(p)]) == p for p in starts)
    assert len({tuple(r[8:]) for r in a.ids.tolist()}) == 6  # the continuations differ


def test_self_generated_follows_the_model(calib_model, tmp_path):
    """Sampling draws from the model: one whose residual stream is one fixed direction (blocks silenced,
    every embedding's unit 0 large) and whose lm_head reads that unit into token 5 writes only 5s."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "peaked"
    shutil.copytree(calib_model, folder)
    sd = load_file(str(folder / "model.safetensors"))
    head = "lm_head.weight" if "lm_head.weight" in sd else "model.embed_tokens.weight"
    cfg = json.loads((folder / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    sd["lm_head.weight"] = torch.zeros_like(sd[head])
    sd["lm_head.weight"][5, 0] = 100.0
    sd["model.embed_tokens.weight"][:, 0] = 100.0
    sd["model.norm.weight"] = torch.ones_like(sd["model.norm.weight"])
    for name in sd:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            sd[name].zero_()
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    ids = calibration_batch(folder, "self", 4, 40, seed=0).ids
    assert bool((ids[:, 20:] == 5).all())


def test_jsonl_conversations_use_the_chat_template(chat_model, tmp_path):
    path = tmp_path / "chat.jsonl"
    convs = [
        [{"role": "user", "content": words(30, i)}, {"role": "assistant", "content": words(40, i + 1)}]
        for i in range(20)
    ]
    path.write_text("\n".join(json.dumps({"messages": c}) for c in convs) + "\n")
    data = calibration_batch(chat_model, path, 4, 64, seed=0)
    assert data.details == {"conversations": 20, "chat_template": True}
    assert data.describe()["chat_template"] is True
    from turbopack.packer.calibration.chat import renderer

    render, used = renderer(chat_model)
    assert used and render(convs[0]) == f"w0<|user|>{words(30, 0)}<|end|>\n<|assistant|>{words(40, 1)}<|end|>\n"


def test_conversations_without_a_template_are_role_lines(calib_model, tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": words(50, i)}]}) for i in range(10)))
    data = calibration_batch(calib_model, path, 2, 64, seed=0)
    assert data.details == {"conversations": 10, "chat_template": False}


@pytest.mark.parametrize("line", ['{"messages": []}', '{"messages": [{"role": "user"}]}', '{"messages": "hi"}'])
def test_bad_conversation_is_one_line(calib_model, tmp_path, line):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": words(10)}) + "\n" + line + "\n")
    with pytest.raises(TurbopackError, match=r"c\.jsonl:2: \"messages\"") as err:
        calibration_batch(calib_model, path, 1, 4, seed=0)
    assert "\n" not in str(err.value)


def test_a_template_that_rejects_the_data_is_one_line(chat_model, tmp_path):
    cfg = json.loads((chat_model / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{{ raise_exception('system turns only') }}"
    (chat_model / "tokenizer_config.json").write_text(json.dumps(cfg))
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "w3"}]}) + "\n")
    with pytest.raises(TurbopackError, match="system turns only"):
        calibration_batch(chat_model, path, 1, 2, seed=0)


# --- the Hub, through a stand-in for the row stream ------------------------------------------------


@pytest.fixture()
def hub(monkeypatch):
    seen = []

    def rows(dataset, split):
        seen.append((dataset, split))
        for i in range(400):
            yield {"text": words(25, i), "messages": [{"role": "user", "content": words(25, i)}], "n": i}

    monkeypatch.setattr(hubdata, "rows", rows)
    return seen


def test_hf_text_column(calib_model, hub):
    data = calibration_batch(calib_model, "hf:org/corpus:validation", 8, 32, seed=0)
    assert hub == [("org/corpus", "validation")]
    assert data.kind == "hf" and data.source == "hf:org/corpus:validation:text"
    assert data.details["rows"] < 400  # streamed until enough tokens, not the whole split
    assert data.tokens >= 8 * 32


def test_hf_messages_column_with_template(chat_model, hub):
    data = calibration_batch(chat_model, "hf:org/chats:train_sft:messages", 4, 32, seed=0)
    assert data.details["chat_template"] is True and data.details["conversations"] == data.details["rows"]


def test_hf_default_dataset_depends_on_chat_template(calib_model, chat_model, hub):
    calibration_batch(calib_model, "hf", 2, 16, seed=0)
    calibration_batch(chat_model, "hf", 2, 16, seed=0)
    assert hub == [tuple(hubdata.DEFAULT_TEXT.split(":")[:2]), tuple(hubdata.DEFAULT_CHAT.split(":")[:2])]


@pytest.mark.parametrize("spec,msg", [("hf:org/x:train:body", "no column 'body'"), ("hf:a:b:c:d", "hf:DATASET"),
                                      ("hf:org/x:train:n", "neither text")])
def test_hf_bad_spec_is_one_line_exit_2(calib_model, hub, tmp_path, capsys, spec, msg):
    with pytest.raises(CalibrationDataError, match=msg):
        calibration_batch(calib_model, spec, 2, 16, seed=0)
    out = tmp_path / "o"
    rc = main(["quantize", str(calib_model), "-o", str(out), "-g", "32", "-m", "gptq", "--calib", spec,
               "--calib-samples", "2", "--calib-seqlen", "16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not out.exists() and len(err) == 1 and msg in err[0]


def test_hf_without_datasets_says_how_to_get_it(calib_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as when it is not installed
    with pytest.raises(CalibrationDataError, match="pip install datasets"):
        calibration_batch(calib_model, "hf:org/x", 2, 16, seed=0)


# --- what the run records -------------------------------------------------------------------------


def test_manifest_config_and_summary_name_the_source(calib_model, tmp_path, capsys):
    out = tmp_path / "q"
    rc = main(["quantize", str(calib_model), "-o", str(out), "-g", "32", "-m", "gptq", "--calib-samples", "4",
               "--calib-seqlen", "16"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "calibrated on self-generated (sampled" in stdout and "default" in stdout
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    data = manifest["calibration"]["data"]
    assert (
        data["kind"] == "self"
        and data["source"].startswith("self-generated")
        and data["chosen_by"].startswith("default")
    )
    qcfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qcfg["calibration"]["kind"] == "self"
