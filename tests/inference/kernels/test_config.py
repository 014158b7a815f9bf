"""Kernel configs (config.KernelConfig) and the tuned table (table.py): parsed once, bad entries a
one-line error naming the file, dispatch's lookup, and the tuner's JSON written back byte for byte."""

from __future__ import annotations

import dataclasses
import json
from importlib.resources import files
from types import SimpleNamespace

import pytest
import torch

from turbopack.formats import get_format
from turbopack.inference.kernels import bench_main, dispatch
from turbopack.inference.kernels import table as kernel_table
from turbopack.inference.kernels.config import ConfigError, KernelConfig, KernelName


def test_config_lookup_buckets_and_overrides(monkeypatch):
    table = kernel_table.KernelTable.from_json({"version": 1, "layouts": {"w4_t64x64": {
        "default": {"1": {"kernel": "gemv", "BN": 16}, "64": {"kernel": "tc", "BM": 64}},
        "shapes": {"4096x4096": {"16": {"kernel": "tc", "BM": 16}}}}}}, "test table")
    monkeypatch.setattr(kernel_table, "load_table", lambda arch: table)  # where dispatch's lookup reads it
    monkeypatch.setattr(dispatch, "device_arch", lambda device: "sm90")
    fmt = get_format("w4a16")
    cfg = lambda n, k, m, over=None: dispatch.resolve_config("w4_t64x64", fmt, n, k, m, torch.device("cpu"), over)  # noqa: E731
    assert cfg(8, 128, 1).block_n == 16
    assert cfg(8, 128, 1).num_warps == 4                                # unset by the entry: the default's
    assert cfg(8, 128, 2).block_m == 64                                 # the next bucket up
    assert cfg(8, 128, 5000).kernel is KernelName.TC and cfg(8, 128, 5000).block_m == 128  # past the last: default
    assert cfg(4096, 4096, 3).block_m == 16
    assert cfg(4096, 4096, 40).block_m == 64                            # past the shape's buckets: the default's
    assert cfg(4096, 4096, 3, KernelConfig(KernelName.TC, block_m=32)).block_m == 32
    over = cfg(4096, 4096, 3, KernelConfig(KernelName.CUDA, ring_stages=6))  # another kernel: its own keys only
    assert over == KernelConfig(KernelName.CUDA, split_k=cfg(4096, 4096, 3).split_k, ring_stages=6)
    assert cfg(4096, 4096, 3, KernelConfig(KernelName.DEFAULT)) == cfg(4096, 4096, 3)
    with pytest.raises(TypeError, match="config is a KernelConfig"):
        cfg(4096, 4096, 3, {"kernel": "tc", "BM": 32})


@pytest.mark.parametrize("entry,match", [
    ({"kernel": "tc", "BM": 16, "bogus": 1}, "'tc' does not read 'bogus'"),
    ({"kernel": "cuda", "BN": 64}, "'cuda' does not read 'BN'"),
    ({"kernel": "warp_speed"}, "kernel 'warp_speed' is not one of"),
    ({"BN": 64}, "kernel None is not one of"),
    ({"kernel": "cuda", "PREFETCH": 1}, "PREFETCH is 1; expected bool"),
    ({"kernel": "gemv", "ROUND": 1}, "ROUND is 1; expected bool"),
    ({"kernel": "gemv", "BN": 32.0}, "BN is 32.0; expected int"),
])
def test_bad_table_entry_is_one_line_error_naming_the_file(entry, match):
    d = {"version": 1, "arch": "sm90", "layouts": {"w4_t64x64": {"default": {}, "shapes": {"64x64": {"16": entry}}}}}
    with pytest.raises(ConfigError, match=match) as err:
        kernel_table.KernelTable.from_json(d, "configs/sm90.json")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("configs/sm90.json: layouts.w4_t64x64.shapes.64x64.16: ")


@pytest.mark.parametrize("d,match", [
    ({"version": 2, "layouts": {}}, "version 2, expected 1"),
    ({"version": 1, "layouts": {}, "tuned_by": "me"}, "unknown keys \\['tuned_by'\\]"),
    ({"version": 1, "layouts": {"w4_t64x64": {"default": {"0": {"kernel": "tc"}}}}}, "M bucket >= 1"),
    ({"version": 1, "layouts": {"w4_t64x64": {"defaults": {}}}}, "layouts.w4_t64x64: expected"),
])
def test_bad_table_is_one_line_error_naming_the_file(d, match):
    with pytest.raises(ConfigError, match=match) as err:
        kernel_table.KernelTable.from_json(d, "configs/sm90.json")
    assert str(err.value).startswith("configs/sm90.json") and "\n" not in str(err.value)


def test_shipped_table_loads_and_writes_back_the_same_bytes():
    """The tuner writes KernelTable.to_json (bench_main.config_table): the shipped file read and
    written back is the same file, so a re-tune that wins nothing changes nothing."""
    kernel_table.load_table.cache_clear()
    table = kernel_table.load_table("sm90")
    raw = files("turbopack.inference.kernels").joinpath("configs", "sm90.json").read_text()
    for layout in table.layouts:
        dispatch.FAMILIES.get(layout)
    assert json.dumps(table.to_json(), indent=1) == raw
    gate_up = table.layouts["w4_t64x64"].shapes["28672x4096"]
    # run 8: v7 unsplit; run 14: the decode by rows in 8 warps (1.11x v7 on the H100); run 18: rows
    # with x per stage (1.14x rows); run 19: with the MLP's activation in its store (GLU) in 16 warps
    assert gate_up[1] == KernelConfig(KernelName.CUDA, split_k=8, ring_stages=4, variant=6, glu_warps=16)
    assert gate_up[16].glu_warps == 0  # there gate|up then act_mul measured faster
    # run 7: the multi-column CUDA kernel (w4_mma.cu) won M = 64; runs 9-10: the warpgroup-MMA kernel
    # (w4_wgmma.cu); run 33: the warp-specialized kernel (w4_wgws.cu, y stored through its idle ring)
    # takes every M from 64 on the four 8B shapes (the other models' shapes: the default's, also it);
    # run 34: its stream-K at M = 64 (112 tiles of 256 x 64 over 132 SMs)
    assert gate_up[64].to_json() == {"kernel": "cuda_ws", "BN": 256, "BM": 64, "STAGES": 13, "STREAM": True}
    w4 = table.layouts["w4_t64x64"]
    assert all(by_m[m].kernel is KernelName.CUDA_WS for by_m in (*w4.entries(4096, 4096), gate_up)
               for m in (64, 256, 2048))


def test_tuner_rewrites_the_shipped_w4_entries_unchanged(monkeypatch):
    """bench_main.config_table over rows whose winners are the shipped w4 entries writes the shipped
    w4 table again: per-shape entries as they are, the 4096x4096 winners as the layout's default
    (the CUDA kernel's SPLIT_K -> 0, its own rule; other kernels' SPLIT_K dropped)."""
    monkeypatch.setattr(bench_main, "device_arch", lambda device: "sm90")
    shipped = kernel_table.load_table("sm90").to_json()
    w4 = shipped["layouts"]["w4_t64x64"]
    rows = [{"layout": "w4_t64x64", "shape": [int(v) for v in shape.split("x")], "m": int(b),
             "cfg": KernelConfig.from_json(cfg, shape)}
            for shape, by_bucket in w4["shapes"].items() for b, cfg in by_bucket.items()]
    rows.append({"error": "no valid config", "layout": "w4_t64x64", "shape": [1, 1], "m": 1})
    out = bench_main.config_table(rows, SimpleNamespace(name="NVIDIA H200"))
    assert out["layouts"] == shipped["layouts"]
    assert list(out) == list(shipped) and out["device"] == "NVIDIA H200"
    o_m1 = next(r for r in rows if r["shape"] == [4096, 4096] and r["m"] == 1)
    o_m1["cfg"] = KernelConfig(KernelName.TC, block_n=64, block_m=16, block_k=128, split_k=5)
    new = bench_main.config_table(rows, SimpleNamespace(name="x"))["layouts"]["w4_t64x64"]
    assert new["default"]["1"] == {"kernel": "tc", "BN": 64, "BM": 16, "BK": 128}
    assert new["shapes"]["4096x4096"]["1"]["SPLIT_K"] == 5


def test_resolved_configs_carry_only_their_kernels_keys():
    """Every config dispatch resolves (family default, tuned entry, override) is a valid table entry."""
    for layout, fmt in [("w4_t64x64", get_format("w4a16", group_size=128)), ("i8_t64x64", get_format("w8a16")),
                        ("i8_rowmajor", get_format("w8a8")), ("fp8_rowmajor", get_format("fp8"))]:
        for m in (1, 3, 16, 64, 65, 4096):
            cfg = dispatch.resolve_config(layout, fmt, 4096, 4096, m, torch.device("cpu"))
            assert KernelConfig.from_json(cfg.to_json(), layout) == cfg


def test_cuda_variant_key_round_trips_and_the_tuner_sweeps_it():
    """VARIANT (which CUDA W4 decode kernel) is a CUDA key like STAGES: written back as read, absent
    from entries that predate it, an int; the tuner sweeps every variant at ring depths it is built for."""
    from turbopack.inference.kernels import cuda_w4, tune

    d = {"kernel": "cuda", "SPLIT_K": 2, "STAGES": 8, "VARIANT": 2}
    assert KernelConfig.from_json(d, "t").variant == 2 and KernelConfig.from_json(d, "t").to_json() == d
    assert KernelConfig.from_json({"kernel": "cuda", "SPLIT_K": 2, "STAGES": 4}, "t").variant is None
    with pytest.raises(ConfigError, match="VARIANT is 1.0; expected int"):
        KernelConfig.from_json({"kernel": "cuda", "VARIANT": 1.0}, "t")
    for m in (1, 16):
        cands = [c for c in tune.candidates("w4a16", 28672, 4096, m, 132) if c.kernel is KernelName.CUDA]
        got = {(c.variant or 0, c.ring_stages) for c in cands}
        rows = {cuda_w4.ROWS, cuda_w4.ROWS64}  # at M <= 8
        assert {v for v, _ in got} == set(cuda_w4.VARIANTS) - (rows if m > 8 else set())
        assert all(st in cuda_w4.VARIANTS[v] for v, st in got)
        assert all(KernelConfig.from_json(c.to_json(), "t") == c for c in cands)


@pytest.mark.parametrize("setup", ["w8a16", "fp8", "w8a8"])
def test_the_tuner_offers_the_8bit_decode_by_rows_at_few_tokens(setup):
    """W8A16 and FP8 decode (csrc/w8.cu): split-K and the decode by rows (VARIANT 4, SPLIT_K its
    warps) at every M <= 16, rows in each warp count and ring depth it is built for; neither past 16.
    Also on 128-k slots (VARIANT 6), where K is a multiple of 128."""
    from turbopack.inference.kernels import cuda_w8, tune

    for k in (14336, 4160):
        wide = k % 128 == 0
        for m in (1, 8, 9, 16, 17):
            cands = [c for c in tune.candidates(setup, 4096, k, m, 132, hopper=True) if c.kernel is KernelName.CUDA]
            for v in (cuda_w8.ROWS, cuda_w8.ROWS_WIDE):
                rows = {(c.split_k, c.ring_stages) for c in cands if c.variant == v}
                want = {(w, st) for w in cuda_w8.ROWS_WARPS for st in cuda_w8.VARIANTS[v]}
                offered = m <= cuda_w8.M_MAX and (v == cuda_w8.ROWS or wide)
                assert rows == (want if offered else set()), (k, m, v)
            assert {c.variant for c in cands} <= {None, cuda_w8.ROWS, cuda_w8.ROWS_WIDE}
            assert all(c.ring_stages in cuda_w8.VARIANTS[c.variant or cuda_w8.SPLIT] for c in cands)


def test_the_tuner_offers_the_w4_rows_with_x_per_stage_up_to_16_tokens():
    """W4A16's decode by rows (csrc/w4.cu): the 16- and 64-row CTAs at M <= 8 (one token column of
    staged x), the rows with x per stage (VARIANT 6) at every M <= 16, each in 8 and 16 warps at
    ring 4, VARIANT 6 past 8 tokens also in 4; none past 16."""
    from turbopack.inference.kernels import cuda_w4, tune

    for m in (1, 8, 9, 16, 17):
        got = {(c.variant, c.split_k, c.ring_stages) for c in tune.rows_candidates("w4a16", m)}
        variants = (cuda_w4.ROWS, cuda_w4.ROWS64, cuda_w4.ROWS_X) if m <= 8 else (cuda_w4.ROWS_X,) if m <= 16 else ()
        warps = {v: cuda_w4.ROWS_X_WARPS_TWO_COLUMNS if v == cuda_w4.ROWS_X and m > 8 else (8, 16) for v in variants}
        assert got == {(v, w, 4) for v in variants for w in warps[v]}, m
        cands = tune.candidates("w4a16", 28672, 4096, m, 132, hopper=True)
        assert (cuda_w4.ROWS_X in {c.variant for c in cands}) == (m <= 16), m


def test_cluster_is_a_v7_key_the_tuner_offers_on_hopper_where_built():
    """CLUSTER (split-K in a thread-block cluster): a bool CUDA key, written back as read; the
    tuner offers it on Hopper at M <= 8 (one token column: kClusterBuilt in csrc/w4.cu and w8.cu)
    for splits of 2..16, W4 at v7's rings 4 and 6, and nowhere else."""
    from turbopack.inference.kernels import cuda_w4, cuda_w8, tune

    d = {"kernel": "cuda", "SPLIT_K": 4, "STAGES": 4, "VARIANT": 2, "CLUSTER": True}
    assert KernelConfig.from_json(d, "t").cluster is True and KernelConfig.from_json(d, "t").to_json() == d
    with pytest.raises(ConfigError, match="CLUSTER is 1; expected bool"):
        KernelConfig.from_json({**d, "CLUSTER": 1}, "t")
    for m, hopper in ((1, True), (8, True), (9, True), (16, True), (1, False)):
        cands = [c for c in tune.candidates("w4a16", 4096, 4096, m, 132, hopper=hopper) if c.cluster]
        assert bool(cands) == (hopper and m <= cuda_w4.CLUSTER_M_MAX), (m, hopper)
        assert all(c.variant == 2 and 1 < c.split_k <= cuda_w4.CLUSTER_MAX and c.ring_stages in cuda_w4.CLUSTER_STAGES
                   for c in cands)
        for setup in ("w8a16", "fp8"):  # the 8-bit decode kernel (csrc/w8.cu): one token column, every ring
            cands = [c for c in tune.candidates(setup, 4096, 4096, m, 132, hopper=hopper) if c.cluster]
            assert bool(cands) == (hopper and m <= cuda_w8.CLUSTER_M_MAX), (setup, m, hopper)
            assert all(c.kernel is KernelName.CUDA and 1 < c.split_k <= cuda_w8.CLUSTER_MAX for c in cands)


def test_a_run_at_some_m_keeps_the_shipped_winners_of_the_others(monkeypatch):
    """`bench_linear.py --tune --ms 1,16` rewrites the M=1 and M=16 buckets of the layouts it
    measured; the shipped M=64..2048 winners (dq_mm, say) stay."""
    monkeypatch.setattr(bench_main, "device_arch", lambda device: "sm90")
    shipped = kernel_table.load_table("sm90").to_json()["layouts"]["w4_t64x64"]
    new_cfg = KernelConfig(KernelName.CUDA, split_k=3, ring_stages=8, variant=2)
    rows = [{"layout": "w4_t64x64", "shape": [int(v) for v in shape.split("x")], "m": 1, "cfg": new_cfg}
            for shape in shipped["shapes"]]
    out = bench_main.config_table(rows, SimpleNamespace(name="x"))["layouts"]["w4_t64x64"]
    for shape, by_bucket in shipped["shapes"].items():
        assert out["shapes"][shape]["1"] == new_cfg.to_json()
        assert {b: c for b, c in out["shapes"][shape].items() if b != "1"} == \
            {b: c for b, c in by_bucket.items() if b != "1"}
    assert out["default"]["2048"] == shipped["default"]["2048"] and out["default"]["1"]["VARIANT"] == 2


def test_tuner_models_are_the_end_to_end_presets_shapes(monkeypatch):
    """`bench_linear.py --model X` tunes the layer shapes that `bench_e2e.py --shape X` decodes."""
    import importlib
    from pathlib import Path

    from turbopack.inference.kernels import bench

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[3] / "benchmarks"))
    e2e = importlib.import_module("bench_e2e")
    assert set(bench.MODELS) == set(e2e.SHAPES)
    for name, c in e2e.SHAPES.items():
        h, d = c.hidden, c.head_dim
        want = {"qkv": ((c.n_heads + 2 * c.n_kv_heads) * d, h), "o": (h, c.n_heads * d),
                "gate_up": (2 * c.intermediate, h), "down": (h, c.intermediate)}
        assert bench.MODELS[name] == want, name


def test_table_variant_edits_the_shipped_table_and_refuses_what_dispatch_would(tmp_path):
    """benchmarks/device/table_variant.py (tables for build_ab.py --table): the edited entry changes,
    the rest is the shipped table's, the file parses as dispatch parses it; an unknown key or a
    missing entry stops it before anything is written."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[3] / "benchmarks" / "device" / "table_variant.py"
    spec = importlib.util.spec_from_file_location("table_variant", tool)
    tv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tv)
    shipped = json.loads(tv.SHIPPED.read_text())
    out = tmp_path / "glu8.json"
    res = subprocess.run([sys.executable, str(tool), str(out), "28672x4096@1,8:GLU_WARPS=8/STAGES=4"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    got = json.loads(out.read_text())
    entries = got["layouts"]["w4_t64x64"]["shapes"]["28672x4096"]
    assert entries["1"]["GLU_WARPS"] == entries["8"]["GLU_WARPS"] == 8
    for m in ("1", "8"):
        shipped["layouts"]["w4_t64x64"]["shapes"]["28672x4096"][m]["GLU_WARPS"] = 8
    assert got == shipped
    kernel_table.KernelTable.from_json(got, str(out))
    for edit, why in (("28672x4096@1:FOO=3", "does not read 'FOO'"), ("1x1@1:SPLIT_K=8", "no entry 1x1 at M = 1"),
                      ("28672x4096@1", "write [LAYOUT/]NxK@M")):
        bad = tmp_path / "bad.json"
        res = subprocess.run([sys.executable, str(tool), str(bad), edit], capture_output=True, text=True)
        assert res.returncode != 0 and why in res.stderr and not bad.exists(), (edit, res.stderr)


def test_a_retune_keeps_glu_warps_only_beside_the_config_it_was_measured_with(monkeypatch):
    """GLU_WARPS comes from glu_rows.py, not the tuner: a re-tuned bucket whose plain config is the
    shipped one keeps the shipped GLU_WARPS (0 included: the two launches won); a new winner drops it."""
    monkeypatch.setattr(bench_main, "device_arch", lambda device: "sm90")
    shipped = kernel_table.load_table("sm90").layouts["w4_t64x64"].shapes
    with_glu = [(shape, m, cfg) for shape, by_m in shipped.items() for m, cfg in by_m.items()
                if cfg.glu_warps is not None]
    assert {cfg.glu_warps for _, _, cfg in with_glu} >= {0, 8}
    rows = [{"layout": "w4_t64x64", "shape": [int(v) for v in shape.split("x")], "m": m,
             "cfg": dataclasses.replace(cfg, glu_warps=None)} for shape, m, cfg in with_glu]
    out = bench_main.config_table(rows, SimpleNamespace(name="x"))["layouts"]["w4_t64x64"]["shapes"]
    for shape, m, cfg in with_glu:
        assert out[shape][str(m)]["GLU_WARPS"] == cfg.glu_warps
    for r in rows:
        r["cfg"] = dataclasses.replace(r["cfg"], ring_stages=r["cfg"].ring_stages + 1)
    out = bench_main.config_table(rows, SimpleNamespace(name="x"))["layouts"]["w4_t64x64"]["shapes"]
    assert not any("GLU_WARPS" in out[shape][str(m)] for shape, m, _ in with_glu)
