"""Stream-K in the W4A16 / W8A16 warp-specialized kernel (csrc/ws_stream.cuh, STREAM). On the CPU: the
real sk_segments, compiled by nvcc as a host program, over many grids: every 64-k stage of every tile
in exactly one CTA's run, each tile's one head the last segment of its CTA, every other slice its
CTA's first segment (no wait cycle) with its own plane below cuda_w4ws.stream_planes. On an sm90
GPU: both kernels against the contract (tolerances of test_cuda_w4ws / test_cuda_w8ws) on ragged
shapes, up to nine slices a tile, the same bits twice and the counters left zeroed, in a CUDA graph
and through dispatch."""

from __future__ import annotations

import subprocess

import pytest
import torch
from wgmma_cases import TOL, hopper, replayed_in_a_graph, w4_weight

from turbopack.formats import get_format
from turbopack.inference.kernels import cuda_build, cuda_w4ws, cuda_w8ws, reference, tune
from turbopack.inference.kernels.config import KernelConfig, KernelName
from turbopack.inference.kernels.epilogue import counters, dirty_zeroed_buffers, stream_ctas, stream_planes, workspace

_HOST = r"""
#include <cstdio>
#include "ws_stream.cuh"
int main() {
  int tiles, S, P;
  while (std::scanf("%d %d %d", &tiles, &S, &P) == 3)
    for (int c = 0; c < P; ++c) {
      SkSeg s[2];
      const int n = sk_segments(s, c, P, S, tiles);
      for (int j = 0; j < n; ++j)
        std::printf("%d %d %d %d %d %d %d %d %d\n", tiles, S, P, c, j, s[j].tile, s[j].lo, s[j].hi,
                    s[j].lo ? s[j].plane : -1 - s[j].peers);
    }
}
"""
#: (tiles, stages a tile, CTAs): qkv at M = 256 on 132 SMs, o at 64, tiny and prime ones, one CTA a stage
GRIDS = [(48, 64, 132), (32, 64, 132), (96, 64, 132), (112, 64, 132), (1, 4, 4), (1, 18, 7), (7, 5, 13),
         (18, 18, 132), (5, 131, 132), (65, 3, 132), (3, 3, 8), (9, 14, 100)]


@pytest.fixture(scope="module")
def segments(tmp_path_factory):
    if cuda_build.nvcc() is None:
        pytest.skip("nvcc not installed")
    d = tmp_path_factory.mktemp("ws_stream")
    (d / "host.cu").write_text(_HOST)
    exe = d / "host"
    subprocess.run([cuda_build.nvcc(), "-std=c++17", "-I", str(cuda_build.CSRC), str(d / "host.cu"), "-o", str(exe)],
                   check=True, capture_output=True)
    stdin = "".join(f"{t} {s} {p}\n" for t, s, p in GRIDS)
    out = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, check=True).stdout
    rows = [tuple(map(int, line.split())) for line in out.splitlines()]
    return {g: [r[3:] for r in rows if r[:3] == g] for g in GRIDS}


@pytest.mark.parametrize("grid", GRIDS)
def test_segments_cover_every_stage_once_heads_last_slices_first(segments, grid):
    tiles, s, p = grid
    assert (-(-tiles * s // p)) < s, "a grid stream_ctas would refuse"
    seen, heads, planes = {}, {}, {}
    by_cta = {}
    for c, j, t, lo, hi, tag in segments[grid]:
        by_cta.setdefault(c, []).append((j, t, lo, hi, tag))
        for kt in range(lo, hi):
            assert (t, kt) not in seen, f"stage {kt} of tile {t} in CTAs {seen[(t, kt)]} and {c}"
            seen[(t, kt)] = c
        if lo == 0:
            heads[t] = (c, -1 - tag)
        else:
            planes.setdefault(t, []).append(tag)
    assert len(seen) == tiles * s
    assert sorted(heads) == list(range(tiles))
    runs = [sum(hi - lo for _, _, lo, hi, _ in segs) for segs in by_cta.values()]
    assert max(runs) - min(runs) <= 1 and len(by_cta) == p  # equal runs, every CTA busy
    for c, segs in by_cta.items():
        assert len(segs) <= 2
        for j, _t, lo, _hi, _ in segs:
            assert lo > 0 or j == len(segs) - 1, f"CTA {c}: a head before another segment"
            assert lo == 0 or j == 0, f"CTA {c}: a slice past its first segment"
    for t, (_c, peers) in heads.items():
        assert sorted(planes.get(t, [])) == list(range(peers)), t
    assert max(peers for _, peers in heads.values()) == stream_planes(tiles, s, p)


def test_stream_ctas_where_tiles_are_fewer_than_sms():
    assert stream_ctas(48, 64, 132) == 132  # qkv at M = 256, 128 x 256 tiles
    assert stream_ctas(32, 64, 132) == 132  # o at M = 64, 128 x 64
    assert stream_ctas(224, 64, 132) == 0  # gate_up at M = 256: more tiles than SMs
    assert stream_ctas(1, 4, 132) == 4  # one tile of 4 stages: a CTA a stage
    assert stream_ctas(1, 1, 132) == 0  # one stage: nothing to share
    assert stream_ctas(131, 2, 132) == 0  # runs of 2 stages: not shorter than a tile
    assert stream_planes(48, 64, 132) == 3 and stream_planes(1, 4, 4) == 3


def test_grid_plan_falls_back_to_the_split_where_stream_k_does_not_apply():
    """A tuned bucket's STREAM entry also serves M and N it was not measured at: stream-K where the
    tiles are fewer than the SMs, else the wave split (never an error in a forward)."""
    assert cuda_w4ws.grid_plan(6144, 4096, 256, 128, 256, 0, False, True, 132) == (1, 132, 3)
    split, ctas, planes = cuda_w4ws.grid_plan(28672, 4096, 256, 128, 256, 0, False, True, 132)
    assert ctas == 0 and split == cuda_w4ws.wave_split(28672, 4096, 256, 128, 256, 132)
    assert planes == (split if split > 1 else 0)
    assert cuda_w4ws.grid_plan(6144, 4096, 2048, 128, 256, 3, False, True, 132)[:2] == (1, 0)  # 384 tiles
    assert cuda_w4ws.grid_plan(6144, 4096, 256, 128, 256, 3, False, False, 132) == (3, 0, 3)
    assert cuda_w4ws.grid_plan(6144, 4096, 256, 128, 256, 3, True, False, 132) == (3, 0, 0)  # CLUSTER: no plane


def test_one_plane_is_scratch_never_the_zeroed_workspace():
    """o at M = 256 in 128 x 64 tiles: 128 tiles of 64 stages over 132 CTAs, two slices a tile, so one
    plane. Run 34's tuner got it from the split-1 dummies, the shared zeroed fp32 workspace: the planes
    were left in it (and past its end where it was smaller), and the next split-K candidate that adds
    into it missed by 0.71."""
    assert cuda_w4ws.grid_plan(4096, 4096, 256, 128, 64, 0, False, True, 132) == (1, 132, 1)
    cpu = torch.device("cpu")
    planes, cnt = cuda_w4ws.plane_slices(cpu, 4096, 256, 128, 64, 1)
    assert planes.data_ptr() != workspace(cpu, 1, torch.float32).data_ptr() and planes.numel() >= 256 * 4096
    assert cnt.data_ptr() == workspace(cpu, 1, torch.int32).data_ptr() and cnt.numel() >= 128
    none, _ = cuda_w4ws.plane_slices(cpu, 4096, 256, 128, 64, 0)
    assert none.data_ptr() == workspace(cpu, 1, torch.float32).data_ptr()  # a dummy no kernel writes


def test_dirty_zeroed_buffers_names_and_rezeroes_them():
    """What the tuner (per candidate) and tests/conftest.py (per GPU test) check: the scratch planes
    may hold anything, the zeroed buffers nothing."""
    cpu = torch.device("cpu")
    assert dirty_zeroed_buffers() == []
    workspace(cpu, 8, torch.float32)[3] = 1.5
    counters(cpu, 8, "test")[:2] = 1
    cuda_w4ws.plane_slices(cpu, 4096, 256, 128, 64, 1)[0].fill_(7.0)
    assert dirty_zeroed_buffers() == ["cpu torch.float32: 1 non-zero", "cpu counters:test: 2 non-zero"]
    assert dirty_zeroed_buffers() == []


def test_config_and_tuner():
    d = {"kernel": "cuda_ws", "BN": 128, "BM": 256, "STAGES": 6, "STREAM": True}
    cfg = KernelConfig.from_json(d, "test")
    assert cfg == KernelConfig(KernelName.CUDA_WS, block_n=128, block_m=256, ring_stages=6, stream_k=True)
    assert cfg.to_json() == d
    tiles = {"w4a16": {(128, 256), (128, 128), (256, 64)}, "w8a16": {(128, 256), (128, 128), (256, 64)},
             "w8a8": set(), "fp8": set()}  # run 34: 2-15 us behind the best split there, not offered
    for setup, want in tiles.items():
        cands = [c for c in tune.candidates(setup, 6144, 4096, 256, 132, hopper=True) if c.stream_k]
        assert {(c.block_n, c.block_m) for c in cands} == want, setup
        assert all(c.split_k is None and c.cluster is None for c in cands)
        assert not [c for c in tune.candidates(setup, 28672, 4096, 2048, 132, hopper=True) if c.stream_k]
    with pytest.raises(ValueError, match="exclude"):
        cuda_w4ws.launch_grid(torch.device("cpu"), 6144, 4096, 256, 128, 256, 0, True, True)


#: (M, N, K, BN, BM, STAGES): up to nine slices a tile (18 stages over 132 CTAs), one CTA a stage, ragged
#: N and M, every tile; (256, 2816, 1024, 128, 64): at most two slices a tile, one plane (on 132 SMs)
CASES = [(300, 1072, 1152, 128, 256, 4), (200, 1072, 1152, 128, 128, 10), (64, 1004, 1152, 256, 64, 13),
         (17, 128, 256, 128, 64, 3), (256, 4096, 4096, 128, 256, 6), (100, 1072, 1152, 128, 64, 17),
         (256, 2816, 1024, 128, 64, 16)]


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("m,n,k,bn,bm,stages", CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_w4_matches_reference_deterministic_counters_zeroed(m, n, k, bn, bm, stages, dtype):
    fmt, q = w4_weight(n, k, 128, False, dtype, m + n)
    packed = reference.pack_w4(q, 64)
    x = torch.randn(m, k, device="cuda").to(dtype)
    b = torch.randn(n, device="cuda").to(dtype)
    want = reference.ref_linear(x, "w4a16", q, b)
    kw = dict(group=128, bn=bn, bm=bm, stages=stages, stream=True)
    y = cuda_w4ws.w4_wgws(x, packed, (n, k), b, **kw)
    assert reference.rel_err(y, want) < TOL[dtype]
    assert torch.equal(y, cuda_w4ws.w4_wgws(x, packed, (n, k), b, **kw)), "not deterministic"
    # the counters the heads re-zeroed serve a split-K call next
    y3 = cuda_w4ws.w4_wgws(x, packed, (n, k), b, group=128, bn=bn, bm=bm, stages=stages, split_k=2)
    assert reference.rel_err(y3, want) < TOL[dtype]
    # the shared zeroed buffers are as the other kernels' atomics expect them
    assert not workspace(x.device, 1, torch.float32).any() and not workspace(x.device, 1, torch.int32).any()


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("m,n,k,bn,bm,stages", CASES)
def test_w8_matches_reference(m, n, k, bn, bm, stages):
    torch.manual_seed(m)
    q = get_format("w8a16").quantize(torch.randn(n, k, device="cuda") * 0.02)
    packed = reference.pack_bytes(q["qweight"], q["scales"], 64, 64)
    x = torch.randn(m, k, device="cuda").bfloat16()
    stages = min(stages, cuda_w8ws.max_stages(bn, bm))
    y = cuda_w8ws.w8_wgws(x, packed, (n, k), None, bn=bn, bm=bm, stages=stages, stream=True)
    assert reference.rel_err(y, reference.ref_linear(x, "w8a16", q)) < 5e-3


@pytest.mark.gpu
@hopper
def test_in_a_graph_and_through_dispatch():
    from turbopack.inference.kernels.dispatch import linear

    n, k = 2048 + 48, 2048
    fmt, q = w4_weight(n, k, 128, False, torch.bfloat16, 3)
    packed = reference.pack_w4(q, 64)
    x = torch.randn(256, k, device="cuda").bfloat16()
    cfg = KernelConfig(KernelName.CUDA_WS, block_n=128, block_m=128, ring_stages=9, stream_k=True)
    y = replayed_in_a_graph(lambda x: linear(x, fmt, "w4_t64x64", packed, (n, k), None, cfg), x)
    assert reference.rel_err(y, reference.ref_linear(x, "w4a16", q)) < TOL[torch.bfloat16]
