// The dense W4A16 decode by rows, persistent (turbopack_w4_decode VARIANT 7; w4.cu includes it after
// w4_rowsx.cuh, whose feed, stage math and launch helpers it shares). M <= 8 tokens, one token column.
// Why a third rows kernel: VARIANT 6 gives every 16 rows a CTA, so gate|up's 896 CTAs of 16 warps run
// in 3.4 waves, and each CTA's ramp (its ring's first copies, a DRAM round trip) and tail (the warps'
// sums meeting in shared memory, the store) leave its share of the DRAM stream idle. In the 8B step
// gate|up streamed 2.47 TB/s and down 2.23, where one launch that only streams reaches 2.8 and cuBLAS's
// lm_head 3.0 (timeline.py, run 21). Here the grid is the SM slots the occupancy allows, and CTA b
// takes the row tiles b, b + gridDim.x, ...:
//   - each warp keeps VARIANT 6's K slice for every tile, and its ring runs on across tiles: the next
//     tile's first stages are in flight while the warps meet and store the last one's, and only the
//     first tile's ramp is paid (before pdl_wait, under PDL);
//   - the ring's slot is a running index (a tile's stages need not fill the ring a whole number of
//     times), the feed re-seated on the next tile's rows when the issue crosses into it;
//   - per tile the warps' sums go to a buffer past the rings ([W][8][16] fp32), a barrier, then the
//     first 16 M threads add them in warp order and store y, or act(gate) * up for a GLU (VARIANT 6's
//     halves), and a second barrier frees the buffer (two buffers and one barrier took one register
//     more, which the 64-register cap spilled);
//   - y is VARIANT 6's bits: the same stages in the same order per warp, the same sums in warp order;
//   - pdl_trigger after the last tile's barrier, as the other decode kernels at their store.
// No fold (fastpath.FOLD_NORMS, off, runs VARIANT 6).
#pragma once
#include "common.cuh"
#include "rows_store.cuh"  // act_mul's GLU math (common.cuh), store_y
#include "w4_feed.cuh"
#include "w4_rowsx.cuh"  // SharedFeed, w4_rowsx's warp split

namespace {

constexpr int kRowsP = 7;  // the VARIANT

template <typename T, int STAGES, int G, bool ASYM, int W, bool GLU>
__global__ void __launch_bounds__(W * 32, 1024 / (W * 32)) w4_rowsp_kernel(const Args a) {
  constexpr int NG = kStageK / G;
  using Slot = DnSlot<NG, ASYM>;
  using Parts = float[W][kRowsTokens][16];
  extern __shared__ uint4 smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  constexpr int WS = GLU ? W / 2 : W;  // warps per K split (GLU: gate's, then up's)
  const int up = GLU && warp >= WS;
  const int stages = a.K / kStageK, per_w = (stages + WS - 1) / WS;
  const int w_lo = min(stages, (warp - up * WS) * per_w), nst = min(stages, w_lo + per_w) - w_lo;
  const int end = GLU ? a.o.N : a.NP, step = 16 * gridDim.x;  // a tile is 16 rows of y (GLU: of h)
  Slot* ring = reinterpret_cast<Slot*>(smem) + warp * STAGES;
  Parts* parts = reinterpret_cast<Parts*>(reinterpret_cast<Slot*>(smem) + W * STAGES);  // the warps' sums
  const Lin L{a.qw, a.scales, a.zeros, a.o.N, a.NP, a.K, a.KT, a.KGP, a.TN};
  SharedFeed<T, NG, ASYM> feed(L, blockIdx.x * 16 + up * a.o.N, w_lo, lane, ring);
  // the next (tile, stage) to issue, tile-major: its tile's first row and the stage (a warp with no
  // stage issues nothing); the issue past a tile's last stage re-seats the feed on the next tile
  int at_row = nst > 0 ? blockIdx.x * 16 : end, at_stage = 0;
  auto issue = [&](int slot) {
    feed.issue(slot);
    if (++at_stage == nst) {
      at_stage = 0;
      at_row += step;
      if (at_row < end) feed.seat(L, at_row + up * a.o.N, w_lo, lane);
    }
  };
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {  // ring_prologue over the CTA's tiles' stages
    if (at_row < end) issue(s);
    cp_async_commit();
  }
  const int tok = g < a.M ? g : 0;  // a missing token reads token 0 (load_x's ALL): never stored
  const uint4* xsrc[1] = {reinterpret_cast<const uint4*>(static_cast<const T*>(a.x) + (long long)tok * a.stride_xm +
                                                         w_lo * kStageK + 16 * c)};
  const bool has_tok[1] = {g < a.M};
  pdl_wait();  // x from here on
  int rd = 0;
  for (int n0 = blockIdx.x * 16; n0 < end; n0 += step) {
    float out[1][4] = {{0.f, 0.f, 0.f, 0.f}};
    for (int j = 0; j < nst; ++j) {
      uint4 xv[1][2][2];
      load_x<1, true>(xv, xsrc, has_tok, j * (kStageK / 8));
      cp_async_wait<STAGES - 2>();
      __syncwarp();  // slot rd's bytes (copied by other lanes) are visible; the slot before it is free
      if (at_row < end) issue(rd == 0 ? STAGES - 1 : rd - 1);
      cp_async_commit();
      stage_qz<T, 1, NG, ASYM>(out, ring[rd].w, ring[rd].sz, xv, g, c);
      rd = rd + 1 == STAGES ? 0 : rd + 1;
    }
    Parts& part = *parts;
#pragma unroll
    for (int q = 0; q < 4; ++q) {  // thread (g, c) holds rows g, g + 8 of tokens 2c, 2c + 1
      const int t = 2 * c + (q & 1);
      if (t < a.M) part[warp][t][g + 8 * (q >> 1)] = out[0][q];
    }
    __syncthreads();
    if (n0 + step >= end) pdl_trigger();  // at the last store, as the other decode kernels (pdl.py)
    for (int idx = threadIdx.x; idx < 16 * a.M; idx += W * 32) {
      const int r = idx & 15, t = idx >> 4;
      float v = 0.f, u = 0.f;
      for (int w = 0; w < WS; ++w) v += part[w][t][r];
      if constexpr (GLU) {
        for (int w = WS; w < W; ++w) u += part[w][t][r];
        static_cast<T*>(a.o.y)[(long long)t * a.o.N + n0 + r] = act_mul<T>(a.act, v, u);
      } else if (n0 + r < a.o.N) {
        store_y<T>(a.o, n0 + r, t, v);
      }
    }
    __syncthreads();  // the sums are read: the next tile's may go in
  }
  cp_async_wait<0>();  // the empty groups past the last item
}

// The SM slots of one build at its shared memory: its grid (never more than the tiles)
template <typename K>
int rowsp_slots(K kern, int threads, int smem) {
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, threads, smem) != cudaSuccess) return 0;
  return per_sm * sm_count();
}

template <typename T, int G, bool ASYM, int W>
int launch_rowsp(const Args& a, cudaStream_t s) {
  constexpr int kSmem = W * 4 * static_cast<int>(sizeof(DnSlot<kStageK / G, ASYM>)) + W * kRowsTokens * 16 * 4;
  void (*kern)(const Args) = a.act ? w4_rowsp_kernel<T, 4, G, ASYM, W, true> : w4_rowsp_kernel<T, 4, G, ASYM, W, false>;
  static bool raised[2] = {false, false};
  static int slots[2] = {0, 0};
  const cudaError_t e = raise_smem_once(kern, raised[a.act != 0], kSmem);
  if (e != cudaSuccess) return static_cast<int>(e);
  if (slots[a.act != 0] == 0) slots[a.act != 0] = rowsp_slots(kern, W * 32, kSmem);
  if (slots[a.act != 0] <= 0) return -4;
  const int tiles = a.act ? a.o.N / 16 : a.NP / 16;
  return static_cast<int>(launch_kernel(kern, dim3(min(tiles, slots[a.act != 0])), dim3(W * 32), kSmem, s, a));
}

// VARIANT 7: M <= 8, split_k is its warps (8 or 16), ring 4, no fold. Scales or zeros not 16-byte
// aligned: v7 at the default split, as by_rows_x (GLU: refused, -1).
template <typename T>
int by_rows_p(const Args& a, const Fold& f, int stages, cudaStream_t s) {
  if (stages != 4) return -2;
  if (a.M > 8 || (a.split_k != 8 && a.split_k != 16) || f.res || f.ss_in) return -1;
  if (!chunks_aligned(a)) return a.act ? -1 : v7_fallback<T>(a, s);
  const bool asym = a.zeros != nullptr, w16 = a.split_k == 16;
  if (a.G == 128) {
    if (asym) return w16 ? launch_rowsp<T, 128, true, 16>(a, s) : launch_rowsp<T, 128, true, 8>(a, s);
    return w16 ? launch_rowsp<T, 128, false, 16>(a, s) : launch_rowsp<T, 128, false, 8>(a, s);
  }
  if (asym) return w16 ? launch_rowsp<T, 64, true, 16>(a, s) : launch_rowsp<T, 64, true, 8>(a, s);
  return w16 ? launch_rowsp<T, 64, false, 16>(a, s) : launch_rowsp<T, 64, false, 8>(a, s);
}

}  // namespace
