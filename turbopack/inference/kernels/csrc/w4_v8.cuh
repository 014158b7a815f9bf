// Part of w4.cu: the v8 decode kernel (VARIANT 3: v7's stage loop on persistent stripes), its stripe
// arithmetic and its ring feed (the stage epilogue is w4_stage.cuh's group_fma). Not standalone:
// w4.cu includes it after v5's Args, which it reads; a header of its own to keep w4.cu under the
// module size. Anonymous namespace, as common.cuh.
#pragma once
#include "common.cuh"
#include "w4_stage.cuh"

namespace {

// ---- v8 (VARIANT 3): v7's stage loop on a persistent stripe schedule ----
// v7's grid is ceil(N/64) x split CTAs: gate_up at split 2 is 896 CTAs for 132 SMs x 8 slots (0.85
// of a wave), o (64 row tiles) needs split 16 to fill the machine, and every CTA drains its ring at
// the end of its K slice. v8 (Marlin's "stripes"): the W = tiles x S work items (row tile of 64
// rows, 128-k stage; S = K/128) in tile-major order are cut into grid = min(W, SMs x CTAs per SM)
// contiguous stripes, CTA i taking [i*W/grid, (i+1)*W/grid): every CTA streams floor or ceil(W/grid)
// stages (no tail), and its warps' rings run on across a tile boundary (the next tile's first stages
// are in flight while the current tile's last ones compute). Leaving a tile (its last stage, or the
// stripe's end) the CTA stores its fp32 partials through store_tile_at: the split-K workspace and
// counter, expecting owner(last item) - owner(first item) + 1 arrivals (owner(w) = ((w+1)*grid-1)/W,
// the stripe holding item w; stripes are never empty since grid <= W), or y directly when one stripe
// holds the whole tile. H200 (132 SMs x 8 CTAs = 1056), Llama-3-8B, M = 1: gate_up 448 tiles x 32 =
// 14336 items, 13-14 per CTA, a tile over 3-4 stripes; down 64 x 112 = 7168, 6-7 per CTA, 17 per
// tile; qkv 96 x 32 = 3072, 2-3 per CTA, 11 per tile; o 64 x 32 = 2048, 1-2 per CTA, 16-17 per tile.
// Sum of x: the stages a stripe touches are the cyclic range lo mod S, lo+1, ... (min(L, S) of them
// for L items), so the table holds entry e = stage (lo + e) mod S for e < min(L, S) and item lo + j
// reads entry j mod S: computed once per CTA in the prologue (v6's sum_x, while the ring's first
// stages load), min(ceil(W/grid), S) x NG x NTOK x 32 bytes: 7 KiB at most for the 8B shapes
// (gate_up M=16 g64 at 4 CTAs per SM, ~112 registers: 28 x 2 x 2 x 32 = 3.5 KiB; down at 1 CTA per
// SM: 55 entries, 6.9 KiB), against v7's whole K range per CTA at split 1 (down: 112 entries). A
// warp whose 16 rows are past NP in the last tile runs the loop (the flushes are CTA
// barriers) without copies; its MMAs run on whatever its ring slots hold and are never stored.

__host__ __device__ __forceinline__ int stripe_lo(long long cta, long long items, long long grid) {
  return static_cast<int>(cta * items / grid);
}
__host__ __device__ __forceinline__ int stripe_owner(long long item, long long items, long long grid) {
  return static_cast<int>(((item + 1) * grid - 1) / items);
}

// The copy side of one warp's ring in v8: item (tile, stage) -> this warp's weight and scale sources.
// Within a tile the pointers advance by constants, as v7's; seek() recomputes them at a new tile.
template <typename T, int NG, bool ASYM>
struct V8Feed {
  const uint4* wsrc;
  const char* szsrc;
  int szstep;  // bytes from one stage's scale (zero) chunk to the next: NG * TN elements
  int tile, stage;
  bool act;  // the warp's rows of `tile` exist (the last tile may be partial)
  __device__ __forceinline__ void seek(const Args& a, int warp, int lane) {
    const int n0 = tile * (kWarps * 16) + warp * 16;
    act = n0 < a.NP;
    const int tn = n0 / a.TN, r0 = n0 % a.TN;
    wsrc = a.qw + (((long long)tn * a.KT + 2 * stage) * a.TN + r0) * 2 + lane;
    const long long grp0 = (long long)tn * a.KGP + stage * NG;
    szsrc = lane < 2 * NG
        ? reinterpret_cast<const char*>(static_cast<const T*>(a.scales) + (grp0 + (lane >> 1)) * a.TN + r0 + 8 * (lane & 1))
        : reinterpret_cast<const char*>(a.zeros + (grp0 + lane - 2 * NG) * a.TN + r0);  // read only where ASYM
  }
  // stage (tile, stage) into ring slot `slot` (the caller commits), then step to the next item. The
  // shared addresses are 32-bit offsets from the lane's chunk of slot 0 (wdst, szdst: set once), which
  // under the 64-register cap the compiler otherwise rebuilds from the thread id at every copy
  __device__ __forceinline__ void issue(const Args& a, uint32_t wdst, uint32_t szdst, int slot, uint64_t policy, int S,
                                        int warp, int lane) {
    const long long tile_step = (long long)a.TN * 2;
    if (act) {
      const uint32_t d = wdst + slot * static_cast<uint32_t>(sizeof(Stage));
      asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(d), "l"(wsrc), "l"(policy));
      asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(d + 512), "l"(wsrc + tile_step),
                   "l"(policy));
      if (lane < SzSlot<NG, ASYM>::kChunks) {
        const uint32_t z = szdst + slot * static_cast<uint32_t>(sizeof(SzSlot<NG, ASYM>));
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(z), "l"(szsrc));
      }
    }
    wsrc += 2 * tile_step;
    szsrc += szstep;
    if (++stage == S) {
      stage = 0;
      ++tile;
      seek(a, warp, lane);
    }
  }
};

// v8's caps (sm_90): v7's for one token column (64 registers at group 128, 8 CTAs per SM; 72 at group
// 64); two token columns at group 128 spilled 60-116 bytes under v7's 80 (the stripe's item, tile and
// issue cursors are ~6 more live registers), so both groups keep the compiler's allocation there.
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 900 || __CUDA_ARCH__ >= 1000)
#define TP_MIN_BLOCKS_V8(NTOK, G) 1
#else
#define TP_MIN_BLOCKS_V8(NTOK, G) ((NTOK) == 1 ? ((G) == 128 ? 8 : 7) : 1)
#endif
template <typename T, int NTOK, int STAGES, int G, bool ASYM>
__global__ void __launch_bounds__(kWarps * 32, TP_MIN_BLOCKS_V8(NTOK, G)) w4_decode_v8_kernel(const Args a) {
  constexpr int NG = kStageK / G;
  using Sz = SzSlot<NG, ASYM>;
  extern __shared__ uint4 smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  const RingSmem<STAGES, Sz, true> sm(smem, warp);
  Stage* ring = sm.ring;
  Sz* szring = sm.szring;
  float2* xsum = sm.xsum;
  const int S = a.K / kStageK;
  const long long items = (long long)((a.NP + kWarps * 16 - 1) / (kWarps * 16)) * S;
  const int lo = stripe_lo(blockIdx.x, items, gridDim.x), hi = stripe_lo(blockIdx.x + 1, items, gridDim.x);
  const uint4* xsrc[NTOK];  // stage 0 of this thread's token
  bool has_tok[NTOK];
#pragma unroll
  for (int t = 0; t < NTOK; ++t) {
    const int tok = 8 * t + g;
    has_tok[t] = tok < a.M;
    xsrc[t] = reinterpret_cast<const uint4*>(static_cast<const T*>(a.x) + (long long)(has_tok[t] ? tok : 0) * a.stride_xm +
                                             16 * c);
  }
  const uint64_t policy = l2_evict_first();
  const uint32_t wdst = static_cast<uint32_t>(__cvta_generic_to_shared(&ring[0].w[0][lane]));  // + slot, + 512: tile 1
  const uint32_t szdst = static_cast<uint32_t>(__cvta_generic_to_shared(&szring[0].v[lane]));
  V8Feed<T, NG, ASYM> feed;
  feed.tile = lo / S, feed.stage = lo % S;
  feed.szstep = lane < 2 * NG ? NG * a.TN * static_cast<int>(sizeof(T)) : NG * a.TN;
  feed.seek(a, warp, lane);
  int issued = lo;  // next item to copy
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (issued < hi) {
      feed.issue(a, wdst, szdst, s, policy, S, warp, lane);
      ++issued;
    }
    cp_async_commit();
  }
  pdl_wait();  // as v5: only weights, scales and zeros are read before it
  sum_x<T, NTOK, NG>(xsum, xsrc, has_tok, min(hi - lo, S), lo % S, S, warp, g, c);
  __syncthreads();  // every warp reads every warp's sums
  float out[NTOK][4];
#pragma unroll
  for (int t = 0; t < NTOK; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) out[t][i] = 0.f;
  int tile = lo / S, stage = lo % S, e = 0, rd = 0, wr = STAGES - 1;
  bool act = tile * (kWarps * 16) + warp * 16 < a.NP;
  for (int w = lo; w < hi; ++w) {
    uint4 xv[NTOK][2][2];
    load_x<NTOK>(xv, xsrc, has_tok, stage * (kStageK / 8));
    cp_async_wait<STAGES - 2>();
    __syncwarp();  // as v5: lane l's chunks are read by other lanes; slot wr is free
    if (issued < hi) {
      feed.issue(a, wdst, szdst, wr, policy, S, warp, lane);
      ++issued;
    }
    cp_async_commit();
    wr = wr + 1 == STAGES ? 0 : wr + 1;
    // no `act` branch: a warp past NP multiplies whatever its slot holds into `out`, which
    // store_tile_at never stores for it (a branch here cost 4 instructions a stage)
    float acc[2][NTOK][4];
    weight_mma<T, NTOK>(acc, ring[rd], xv, g, c);
    group_fma<T, NTOK, NG, ASYM>(out, acc, xsum + e * NG * NTOK * 4, szring[rd], g, c);
    rd = rd + 1 == STAGES ? 0 : rd + 1;
    e = e + 1 == S ? 0 : e + 1;
    if (++stage == S || w + 1 == hi) {  // leaving the tile: its partial sums go out, the ring runs on
      const long long first = (long long)tile * S;
      const int arrivals = stripe_owner(first + S - 1, items, gridDim.x) - stripe_owner(first, items, gridDim.x) + 1;
      store_tile_at<T, NTOK>(a.o, out, tile * (kWarps * 16) + warp * 16, g, c, act, tile, arrivals);
#pragma unroll
      for (int t = 0; t < NTOK; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i) out[t][i] = 0.f;
      stage = 0;
      ++tile;
      act = tile * (kWarps * 16) + warp * 16 < a.NP;
    }
  }
  cp_async_wait<0>();
}

}  // namespace
