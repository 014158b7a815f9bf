"""`turbopack check` on the bundled model: every format and packed arch passes with numbers."""

from __future__ import annotations

import json
import math

from turbopack.cli.app import main
from turbopack.evaluation.check import CASES, PACK_ARCHS


def test_check_bundled_model_passes(capsys):
    rc = main(["check", "--json", "--max-windows", "3"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0, report
    assert report["passed"] and report["tokens"] == 3 * 256
    # a trained model: far below the uniform perplexity of its 2048-token vocabulary
    assert 1 < report["bf16_ppl"] < 200
    rows = report["rows"]
    assert len(rows) == len(CASES) * (1 + len(PACK_ARCHS))
    for row in rows:
        assert row["passed"] and math.isfinite(row["value"]) and row["bits_per_weight"] > 4
        if row["metric"].startswith("ppl"):
            assert row["ppl"] > 1
    stages = {r["stage"] for r in rows}
    assert {"rtn packed sm80, emulator", "rtn packed sm90, emulator", "awq packed sm90, emulator"} <= stages
    assert "rtn packed sm80, emulator, weights-only upcast" in stages  # fp8 on an arch without FP8 MMA
    nvfp4 = [r for r in rows if r["label"] == "nvfp4"]
    assert len(nvfp4) == 1 + len(PACK_ARCHS) and all(4.5 <= r["bits_per_weight"] < 4.6 for r in nvfp4)
    assert {
        "rtn, reference math",
        "awq, reference math",
        "gptq, reference math",
        "rtn+smooth, reference math",
    } <= stages
    for row in rows:
        if row["metric"].startswith("ppl"):  # every reference row is also compared by KL / top-1
            assert 0 < row["kl"] < 0.1 and 0.8 < row["top1"] < 1


def test_check_table_output(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps cells at 80 columns when not on a terminal
    rc = main(
        ["check", "--max-windows", "2", "--methods", "rtn"]
    )  # one 256-token window is too noisy for the ppl thresholds
    out = capsys.readouterr().out
    assert rc == 0 and "PASS" in out and "w4a16 g64 asym" in out and "fp8" in out and "nvfp4" in out


def test_check_unknown_method_is_usage_error(capsys):
    assert main(["check", "--methods", "rtn,spinquant"]) == 2
    err = capsys.readouterr().err
    assert "spinquant" in err and "awq" in err
