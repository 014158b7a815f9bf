"""`quantize --method awq|gptq [--smooth]` end to end on a tiny random Llama: same folder format as
RTN, deterministic, bad calibration input fails with one line and writes nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from turbopack.checkpoint.quantized import QuantizedCheckpoint
from turbopack.cli.app import main
from turbopack.errors import TurbopackError, UnsupportedModelError
from turbopack.packer.calibration import CalibOptions, quantize_calibrated
from turbopack.packer.calibration.data import CalibrationDataError, calibration_batch
from turbopack.packer.options import FormatSpec, OutputOptions
from turbopack.packer.quantize import quantize

SMALL = dict(calib_samples=8, calib_seqlen=32, progress=False)


def layout(folder: Path) -> dict[str, tuple]:
    qc = QuantizedCheckpoint(folder)
    return {n: (e.dtype, tuple(e.shape)) for n, e in qc.ckpt.tensors.items()}


@pytest.fixture(scope="module")
def rtn_w4(calib_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rtn") / "w4"
    quantize(calib_model, out, "w4a16", group_size=32, progress=False)
    return out


@pytest.mark.parametrize("method,extra", [("awq", {}), ("gptq", {}), ("gptq", {"act_order": True, "sym": True})])
def test_calibrated_folder_has_rtn_layout(calib_model, calib_text, rtn_w4, tmp_path, method, extra):
    out = tmp_path / method
    res = quantize(calib_model, out, "w4a16", group_size=32, method=method, calib=calib_text, seed=1, **SMALL, **extra)
    assert len(res.quantized) == 14
    want = layout(rtn_w4)
    if extra.get("sym"):
        want = {n: v for n, v in want.items() if not n.endswith(".zeros")}
    assert layout(out) == want
    qc = QuantizedCheckpoint(out)
    info = qc.modules["model.layers.1.mlp.down_proj"]
    assert info["method"] == method and info["method_params"]["act_order" if method == "gptq" else "n_grid"] is not None
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["method"] == method and config["calibration"]["samples"] == 8
    manifest = json.loads((out / "turbopack.json").read_text())
    assert manifest["calibration"]["data"]["source"] == str(calib_text)
    if method == "awq":  # AWQ folds into the norms: they are written in place and said so
        norm = "model.layers.0.input_layernorm.weight"
        assert norm in manifest["calibration"]["modified"] and "AWQ" in manifest["unquantized"][norm]
        assert not torch.equal(qc.plain_tensor(norm), QuantizedCheckpoint(rtn_w4).plain_tensor(norm))
    from turbopack.evaluation.metrics import evaluate

    assert math.isfinite(evaluate(out, calib_text, seq_len=32, max_windows=4)["perplexity"])


@pytest.mark.parametrize("fmt", ["w8a8", "fp8"])
def test_smoothquant_folder(calib_model, calib_text, tmp_path, fmt):
    out = tmp_path / fmt
    quantize(calib_model, out, fmt, smooth=True, alpha=0.6, calib=calib_text, **SMALL)
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["method"] == "rtn" and q["smooth"]["alpha"] == 0.6
    assert len(QuantizedCheckpoint(out).modules) == 14


def test_pipeline_rtn_equals_streaming_rtn(calib_model, calib_text, rtn_w4, tmp_path):
    """The block-by-block writer with no calibration effect writes exactly what RTN writes."""
    out = tmp_path / "via-pipeline"
    quantize_calibrated(
        calib_model,
        out,
        FormatSpec("w4a16", group_size=32),
        CalibOptions(method="rtn", calib=calib_text, samples=4, seq_len=16),
        OutputOptions(progress=False),
    )
    a, b = QuantizedCheckpoint(out), QuantizedCheckpoint(rtn_w4)
    assert set(a.ckpt.tensors) == set(b.ckpt.tensors)
    for name in a.ckpt.tensors:
        assert torch.equal(a.ckpt.read(name).view(torch.uint8), b.ckpt.read(name).view(torch.uint8)), name


def test_deterministic_with_a_seed(calib_model, calib_text, tmp_path):
    shas = []
    for run in ("a", "b"):
        quantize(calib_model, tmp_path / run, "w4a16", group_size=32, method="gptq", calib=calib_text, seed=7, **SMALL)
        shas.append(json.loads((tmp_path / run / "turbopack.json").read_text())["shards"])
    assert shas[0] == shas[1]
    one = calibration_batch(calib_model, calib_text, 8, 32, seed=7).ids
    assert torch.equal(one, calibration_batch(calib_model, calib_text, 8, 32, seed=7).ids)
    assert not torch.equal(one, calibration_batch(calib_model, calib_text, 8, 32, seed=8).ids)


def test_jsonl_calibration(calib_model, calib_text, tmp_path):
    lines = calib_text.read_text().splitlines()
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(lines)) + "\n")
    assert calibration_batch(calib_model, path, 4, 64, seed=0).ids.shape == (4, 64)


BAD = {
    "empty": ("calib.txt", b"", "no text"),
    "blank": ("calib.txt", b"  \n\n", "no text"),
    "binary": ("calib.bin", bytes(range(256)) * 4, "binary"),
    "latin1": ("calib.txt", "caf\xe9 ".encode("latin-1") * 50, "not UTF-8"),
    "short": ("calib.txt", b"w1 w2 w3\n", "too short"),
    "jsonl_no_text": ("calib.jsonl", b'{"content": "w1 w2"}\n', '"text"'),
    "jsonl_bad": ("calib.jsonl", b'{"text": "w1"}\nnot json\n', ":2: not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_calibration_input_is_one_line_exit_2_nothing_written(calib_model, tmp_path, capsys, case):
    name, data, msg = BAD[case]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(CalibrationDataError) as err:
        calibration_batch(calib_model, tmp_path / name, 8, 32, seed=0)
    assert msg in str(err.value) and "\n" not in str(err.value) and name in str(err.value)
    out = tmp_path / "out"
    rc = main(["quantize", str(calib_model), "-o", str(out), "-f", "w4a16", "-g", "32", "--method", "gptq",
               "--calib", str(tmp_path / name), "--calib-samples", "8", "--calib-seqlen", "32"])
    assert rc == 2 and not out.exists() and not list(tmp_path.glob(".turbopack-tmp-*"))
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("fmt,kw,msg", [
    ("w8a8", {"method": "awq"}, "does not support"),
    ("fp8", {"method": "gptq"}, "does not support"),
    # NVFP4 is RTN only: its grid is not uniform and its global scale spans the tensor (docs/formats.md)
    ("nvfp4", {"method": "gptq"}, "--method gptq does not support --format nvfp4"),
    ("nvfp4", {"method": "awq"}, "--method awq does not support --format nvfp4"),
    ("nvfp4", {"smooth": True}, "--smooth"),
    ("w4a16", {"method": "gptq", "smooth": True}, "--smooth"),
    ("w4a16", {"method": "awq", "act_order": True}, "--act-order"),
    ("w4a16", {"method": "awq", "act_order": False}, "--act-order"),
    ("w4a16", {"method": "awq", "damp": 0.1}, "--damp"),
    ("w4a16", {"method": "gptq", "damp": 0.0}, "--damp"),
    ("w4a16", {"method": "gptq", "gptq_block_size": 0}, "--gptq-block-size"),
    ("w8a8", {"smooth": True, "alpha": 1.5}, "--alpha"),
    ("w4a16", {"method": "spqr"}, "spqr"),
    ("w4a16", {"seed": 3}, "--seed"),
    ("w4a16", {"method": "gptq", "device": "cuda:7" if not torch.cuda.is_available() else "tpu"}, "--device"),
])
def test_bad_options(calib_model, calib_text, tmp_path, fmt, kw, msg):
    data = {} if "seed" in kw else {"calib": calib_text, **SMALL}
    with pytest.raises(TurbopackError, match=msg) as err:
        quantize(calib_model, tmp_path / "o", fmt, group_size=32 if fmt == "w4a16" else None, **kw, **data)
    assert "\n" not in str(err.value) and not (tmp_path / "o").exists()


def test_unsupported_family(calib_model, calib_text, tmp_path):
    import shutil

    other = tmp_path / "gpt2"
    shutil.copytree(calib_model, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UnsupportedModelError):
        quantize(other, tmp_path / "o", "w4a16", group_size=32, method="gptq", calib=calib_text, **SMALL)


def test_eval_cli_json(calib_model, calib_text, capsys):
    assert (
        main(["eval", str(calib_model), "--text", str(calib_text), "--seq-len", "32", "--max-windows", "3", "--json"])
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["windows"] == 3 and res["tokens"] == 96 and res["perplexity"] > 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_cuda_calibration_matches_cpu(calib_model, calib_text, tmp_path, method):
    outs = {}
    for device in ("cpu", "cuda"):
        outs[device] = tmp_path / device
        quantize(
            calib_model, outs[device], "w4a16", group_size=32, method=method, calib=calib_text, device=device, **SMALL
        )
    assert layout(outs["cpu"]) == layout(outs["cuda"])
    a, b = QuantizedCheckpoint(outs["cpu"]), QuantizedCheckpoint(outs["cuda"])
    for name in a.modules:  # float32 math differs in summation order only: codes agree almost everywhere
        wa, wb = a.module(name).dequantize(), b.module(name).dequantize()
        assert (wa != wb).float().mean() < 0.02, name


def test_eval_against_reports_kl(calib_model, calib_text, rtn_w4):
    from turbopack.evaluation.metrics import evaluate

    same = evaluate(calib_model, calib_text, seq_len=32, max_windows=2, against=calib_model)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["top1_agreement"] == 1.0
    assert same["perplexity"] == pytest.approx(
        evaluate(calib_model, calib_text, seq_len=32, max_windows=2)["perplexity"], rel=1e-5
    )
    q = evaluate(rtn_w4, calib_text, seq_len=32, max_windows=2, against=calib_model)
    assert q["kl"] > 1e-6 and q["against_perplexity"] == pytest.approx(same["perplexity"], rel=1e-5)


def test_nan_weight_is_one_line_error(calib_model, calib_text, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from turbopack.errors import BadTensorError

    bad = tmp_path / "nan"
    shutil.copytree(calib_model, bad)
    state = load_file(str(bad / "model.safetensors"))
    state["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(BadTensorError, match="layers.1.mlp.up_proj"):
        quantize(bad, tmp_path / "o", "w4a16", group_size=32, method="gptq", calib=calib_text, **SMALL)
    assert not (tmp_path / "o").exists()


def test_calibrated_quantize_into_a_pipe_prints_a_line_per_block(calib_model, calib_text, tmp_path):
    import re
    import subprocess
    import sys

    out = tmp_path / "q"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "turbopack.cli.app",
            "quantize",
            str(calib_model),
            "-o",
            str(out),
            "-g",
            "32",
            "-m",
            "gptq",
            "--calib",
            str(calib_text),
            "--calib-samples",
            "4",
            "--calib-seqlen",
            "16",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    blocks = json.loads((calib_model / "config.json").read_text())["num_hidden_layers"]
    found = [
        m.groups() for m in re.finditer(r"^block (\d+)/(\d+) gptq: [\d.]+ s, about \d+ s left$", proc.stderr, re.M)
    ]
    assert found == [(str(i), str(blocks)) for i in range(1, blocks + 1)]
    assert "block" not in proc.stdout and "calibrated on" in proc.stdout  # results on stdout, progress on stderr


@pytest.mark.parametrize("flags,act_order,static", [([], True, True), (["--no-act-order"], False, False),
                                                    (["--no-act-order", "--static-groups"], False, True)])
def test_gptq_defaults_and_flags_reach_the_manifest(calib_model, calib_text, tmp_path, flags, act_order, static):
    out = tmp_path / "q"
    rc = main(["quantize", str(calib_model), "-o", str(out), "-g", "32", "-m", "gptq", "--calib", str(calib_text),
               "--calib-samples", "4", "--calib-seqlen", "16", "--damp", "0.05", *flags])
    assert rc == 0
    params = json.loads((out / "turbopack.json").read_text())["calibration"]["method_params"]
    assert (params["act_order"], params["static_groups"], params["percdamp"]) == (act_order, static, 0.05)
