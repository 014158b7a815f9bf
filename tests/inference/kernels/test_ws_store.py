"""A CPU model of csrc/ws_store.cuh's store_rows (the warp-specialized kernels' y store): each lane's
accumulators through stmatrix .trans into the warp's staging rows, then the copy-out loop into y.
stmatrix (PTX ISA): lane 8 m + j gives the shared address of row j of matrix m; the fragment element
(row r, column 2 w + e) of matrix m sits in register m of lane 4 r + w, half e; .trans stores element
(r, col) at position r of the row whose address lane 8 m + col gave. The GPU tests of both kernels
(test_cuda_w4ws.py, test_cuda_i8ws.py) run the real thing against the contract."""

from __future__ import annotations

import itertools

import numpy as np
import pytest


def _store_rows_model(acc: np.ndarray, n_rows: int, m_toks: int, n0: int, tok0: int) -> np.ndarray:
    """acc [32 lanes][R][NTOK][4] (each_out's layout: element i of column t of fragment r is row
    16 r + g + 8 (i // 2), token 8 t + 2 c + i % 2, lane 4 g + c); returns y [m_toks, n_rows] with
    NaN where the warp does not write."""
    r_frags, ntok = acc.shape[1], acc.shape[2]
    ld = 16 * r_frags + 8  # rows_ld
    stage = np.full(8 * ntok * ld, np.nan)
    for r, t in itertools.product(range(r_frags), range(0, ntok, 2)):
        # registers v[m] of every lane: acc[r][t + m // 2][2 (m % 2) + 0, 1]
        regs = [[acc[lane, r, t + m // 2, 2 * (m % 2):2 * (m % 2) + 2] for m in range(4)] for lane in range(32)]
        addr = [((8 * (t + ((lane >> 3) >> 1)) + (lane & 7)) * ld + 16 * r + 8 * ((lane >> 3) & 1))
                for lane in range(32)]
        for m, row, w in itertools.product(range(4), range(8), range(4)):
            for e in range(2):
                col = 2 * w + e  # .trans: element (row, col) -> position row of address lane 8 m + col
                stage[addr[8 * m + col] + row] = regs[4 * row + w][m][e]
    y = np.full((m_toks, n_rows), np.nan)
    runs = 2 * r_frags
    for i in range(8 * ntok * runs):  # every lane's iterations of the copy-out loop
        tok, col = i // runs, 8 * (i % runs)
        gt, gr = tok0 + tok, n0 + col
        if gt >= m_toks or gr >= n_rows:
            continue
        for e in range(8):
            if gr + e < n_rows:
                y[gt, gr + e] = stage[tok * ld + col + e]
    return y


@pytest.mark.parametrize("r_frags,ntok", [(1, 32), (1, 16), (2, 8)])
def test_model_store_rows_puts_every_accumulator_at_its_y(r_frags, ntok):
    rng = np.random.default_rng(r_frags * 100 + ntok)
    acc = rng.standard_normal((32, r_frags, ntok, 4))
    n0, tok0 = 48, 256
    n_rows, m_toks = n0 + 16 * r_frags - 3, tok0 + 8 * ntok - 5  # a ragged last run and token tile
    y = _store_rows_model(acc, n_rows, m_toks, n0, tok0)
    want = np.full_like(y, np.nan)
    for lane, r, t, i in itertools.product(range(32), range(r_frags), range(ntok), range(4)):
        g, c = lane >> 2, lane & 3
        row, tok = n0 + 16 * r + g + 8 * (i // 2), tok0 + 8 * t + 2 * c + i % 2
        if row < n_rows and tok < m_toks:
            want[tok, row] = acc[lane, r, t, i]
    assert np.array_equal(y, want, equal_nan=True)


@pytest.mark.parametrize("r_frags", [1, 2])
def test_staged_rows_of_one_matrix_fall_in_distinct_banks(r_frags):
    """The 8 tokens one stmatrix matrix writes (16 bytes each) start rows_ld apart: their 4-bank
    groups are distinct, so no store of the staging conflicts."""
    ld_bytes = 2 * (16 * r_frags + 8)
    assert ld_bytes % 16 == 0
    groups = {(j * ld_bytes // 4) % 32 // 4 for j in range(8)}
    assert len(groups) == 8


@pytest.mark.parametrize("r_frags,ntok,split", [(1, 32, 2), (2, 8, 3), (1, 16, 5), (1, 8, 8)])
def test_model_sliced_planes_sum_each_accumulator_in_slice_order(r_frags, ntok, split):
    """store_sliced_rows: slice z writes float4 (r, t) of consumer thread i at plane z, tile T,
    [(r NTOK + t) x 256 + i] (float4 units; a plane is tiles x 256 x R NTOK of them, BN x BM floats a
    tile with BN = 128 R, BM = 8 NTOK); the last slice reads its own thread's float4s back from every
    plane in slice order. So no two (tile, thread, float4) share a place, every tile's run fills its
    BN x BM floats exactly, and each thread gets back exactly its own accumulators, summed in order."""
    tiles, kc = 3, r_frags * ntok
    assert 4 * kc * 256 == (128 * r_frags) * (8 * ntok)  # the host's planes: a whole tile of floats
    plane = tiles * kc * 256
    rng = np.random.default_rng(kc + split)
    acc = rng.standard_normal((split, tiles, 256, r_frags, ntok, 4)).astype(np.float32)
    ws = np.full((split * plane, 4), np.nan, np.float32)
    for z, tile, i, r, t in itertools.product(range(split), range(tiles), range(256), range(r_frags), range(ntok)):
        at = z * plane + tile * kc * 256 + (r * ntok + t) * 256 + i
        assert np.isnan(ws[at]).all()  # written once
        ws[at] = acc[z, tile, i, r, t]
    assert not np.isnan(ws).any()  # and every place written
    for tile, i in itertools.product(range(tiles), (0, 37, 255)):
        got = np.zeros((r_frags, ntok, 4), np.float32)
        for z in range(split):
            for r, t in itertools.product(range(r_frags), range(ntok)):
                got[r, t] += ws[z * plane + tile * kc * 256 + (r * ntok + t) * 256 + i]
        want = np.zeros((r_frags, ntok, 4), np.float32)
        for z in range(split):
            want += acc[z, tile, i]
        assert np.array_equal(got, want)
