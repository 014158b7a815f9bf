"""A compressed-tensors folder (our export, or another tool's without turbopack.json): `inspect`
reports its scheme and true compression; `run` and `eval` name `turbopack convert`."""

from __future__ import annotations

import json
import shutil

import pytest

from turbopack.cli.app import main

pytest.importorskip("compressed_tensors")


@pytest.fixture(scope="module")
def folders(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    assert main(["quantize", str(tiny_llama), "-o", str(root / "w4"), "-f", "w4a16", "-g", "32"]) == 0
    assert main(["export", str(root / "w4"), "--to", "compressed-tensors", "-o", str(root / "ct")]) == 0
    shutil.copytree(root / "ct", root / "foreign")
    (root / "foreign" / "turbopack.json").unlink()  # as another tool would write it
    return root


def _inspect(capsys, folder) -> dict:
    capsys.readouterr()
    assert main(["inspect", str(folder), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", ["ct", "foreign"])
def test_inspect_reads_the_scheme_and_compression(folders, capsys, name):
    ours = _inspect(capsys, folders / "w4")
    rep = _inspect(capsys, folders / name)
    assert rep["kind"] == "compressed-tensors" and rep["formats"] == [
        "compressed-tensors pack-quantized: int4 group 32 asym"
    ]
    shapes = {t["name"]: t["shape"] for t in ours["tensors"] if t["dtype"].startswith("w4a16")}
    assert {t["name"]: t["shape"] for t in rep["tensors"] if t["dtype"].startswith("int4")} == shapes
    assert rep["bf16_bytes"] == ours["bf16_bytes"]
    # the same bits per weight up to the zero points' packing: within 2% of our folder's ratio
    assert rep["compression_vs_bf16"] > 2 and abs(rep["compression_vs_bf16"] / ours["compression_vs_bf16"] - 1) < 0.02


@pytest.mark.parametrize("name", ["ct", "foreign"])
@pytest.mark.parametrize(
    "argv", [["run", "--prompt", "hi", "-n", "2", "--device", "cpu"], ["eval"]], ids=["run", "eval"]
)
def test_run_and_eval_name_convert(folders, capsys, name, argv):
    capsys.readouterr()
    assert main([argv[0], str(folders / name), *argv[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a compressed-tensors checkpoint" in err
    assert f"`turbopack convert {folders / name} -o OUT`" in err
