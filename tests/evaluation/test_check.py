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
    assert {"packed sm80, emulator", "packed sm90, emulator"} <= stages
    assert "packed sm80, emulator, weights-only upcast" in stages  # fp8 on an arch without FP8 MMA


def test_check_table_output(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps cells at 80 columns when not on a terminal
    rc = main(["check", "--max-windows", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "PASS" in out and "w4a16 g64 asym" in out and "fp8" in out
