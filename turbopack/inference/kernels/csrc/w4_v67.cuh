// Part of w4.cu: the v6 and v7 decode kernels (VARIANT 1 and 2, one template: w4_decode_v6_kernel)
// and the size of their per-CTA sum-of-x table, which the launchers in w4.cu check. Not standalone:
// w4.cu includes it after v5, whose Args, GroupParams and register caps (TP_MIN_BLOCKS) it uses; a
// header of its own to keep w4.cu under the module size. Anonymous namespace, as common.cuh.
#pragma once
#include "common.cuh"
#include "w4_stage.cuh"

namespace {

// ---- v6 (VARIANT 1): the sum of x per group once per CTA, not once per warp and stage ----
// v5 spends half its MMAs (8 of 16 per stage for one token column) on sum x against all-ones, and
// all four warps of a CTA compute the same sums. v6 computes them once per CTA in a prologue that
// runs while the ring's first STAGES-1 stages are in flight (warp w takes stages w, w+4, ...; the
// same MMAs in the same order as v5, so the sums are v5's bit for bit), keeps them in shared memory
// behind the ring (one float2 per (stage, group, token column, quad lane c): tokens 2c, 2c+1), and
// the main loop reads one broadcast LDS.64 per group and token column instead. The weight copies
// carry an L2 evict-first hint (each weight byte is read once; x, scales and zeros are re-read by
// every CTA). Fewer registers also make room for an 8-deep ring (7 KiB in flight per warp).

// bytes of v6's sum-of-x table behind the ring: per CTA stages x NG x NTOK x 4 lanes x float2
__host__ __device__ constexpr int xsum_bytes(int per, int ng, int ntok) { return per * ng * ntok * 4 * 8; }
constexpr int kXsumMax = 64 * 1024;  // beyond (K > 64K at split 1) the launcher runs v5

// v7 (no sum-x accumulators, no scale registers) fits tighter sm_90 caps at one token column: 72
// registers for group 64 (7 CTAs), 80 for group 128 (6 CTAs; 64 before x was loaded a stage ahead,
// which spills under 64). The M = 1 grids of the 8B shapes put at most ~4.4 CTAs on an SM, so the
// cap is not what bounds their occupancy. Two token columns keep the compiler's allocation (~128;
// the second x set spills under 80). v6 keeps v5's caps, so the tuner weighs both.
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 900 || __CUDA_ARCH__ >= 1000)
#define TP_MIN_BLOCKS_V7(NTOK, G) 1
#else
#define TP_MIN_BLOCKS_V7(NTOK, G) ((NTOK) == 1 ? 6 : 1)
#endif

// v7 (VARIANT 2) = v6 with each stage's scales and zero points copied into the ring with its
// weights (SzSlot, w4_stage.cuh, says why and how).
// SZR: false = v6 (VARIANT 1), true = v7 (VARIANT 2). CL (v7, CLUSTER): launched in clusters of its
// split-K CTAs, which sum their partials there (common.cuh cluster_sum). Shared memory: the
// weight ring [kWarps][STAGES], (v7) the scale ring [kWarps][STAGES], the sum-of-x table.
template <typename T, int NTOK, int STAGES, int G, bool ASYM, bool SZR, bool CL = false>
__global__ void __launch_bounds__(kWarps * 32, SZR ? TP_MIN_BLOCKS_V7(NTOK, G) : TP_MIN_BLOCKS(NTOK, G))
    w4_decode_v6_kernel(const Args a) {
  constexpr int NG = kStageK / G;
  using Sz = SzSlot<NG, ASYM>;
  extern __shared__ uint4 smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  const RingSmem<STAGES, Sz, SZR> sm(smem, warp);
  Stage* ring = sm.ring;
  Sz* szring = sm.szring;
  float2* xsum = sm.xsum;
  const int n0 = blockIdx.x * (kWarps * 16) + warp * 16;
  const bool active = n0 < a.NP;
  const int stages = a.K / kStageK;
  const int per = (stages + a.split_k - 1) / a.split_k;
  const int s_lo = blockIdx.y * per, s_cta = max(s_lo, min(stages, s_lo + per));  // the CTA's stages: all warps sum x
  const int s_hi = active ? s_cta : s_lo;
  const int tn = n0 / a.TN, r0 = n0 % a.TN;
  const long long tile_step = (long long)a.TN * 2;
  const uint4* wsrc = a.qw + (((long long)tn * a.KT + 2 * s_lo) * a.TN + r0) * 2 + lane;
  const long long grp0 = (long long)tn * a.KGP + s_lo * NG;  // (tile, group) row of the first stage's first group
  const T* ssrc = static_cast<const T*>(a.scales) + grp0 * a.TN + r0 + g;  // v6: lane's own scale
  const uint8_t* zsrc = ASYM ? a.zeros + grp0 * a.TN + r0 + g : nullptr;
  const int sz_step = NG * a.TN;
  // v7: lane l < Sz::kChunks copies chunk l of every stage (scales: 2 bytes each, zeros: 1)
  const bool sz_lane = SZR && lane < Sz::kChunks;
  const char* szsrc = lane < 2 * NG
      ? reinterpret_cast<const char*>(static_cast<const T*>(a.scales) + (grp0 + (lane >> 1)) * a.TN + r0 + 8 * (lane & 1))
      : reinterpret_cast<const char*>(a.zeros + (grp0 + lane - 2 * NG) * a.TN + r0);  // read only where ASYM
  const long long szstep = lane < 2 * NG ? (long long)sz_step * sizeof(T) : sz_step;
  const uint4* xsrc[NTOK];
  bool has_tok[NTOK];
#pragma unroll
  for (int t = 0; t < NTOK; ++t) {
    const int tok = 8 * t + g;
    has_tok[t] = tok < a.M;
    xsrc[t] = reinterpret_cast<const uint4*>(static_cast<const T*>(a.x) + (long long)(has_tok[t] ? tok : 0) * a.stride_xm +
                                             s_lo * kStageK + 16 * c);
  }
  const uint64_t policy = l2_evict_first();
  // this lane's chunks in ring slot 0 as 32-bit shared addresses: slot s is s * sizeof(Stage) /
  // sizeof(Sz) further (no generic -> shared conversion per copy)
  const uint32_t wdst = static_cast<uint32_t>(__cvta_generic_to_shared(&ring[0].w[0][lane]));
  const uint32_t szdst = static_cast<uint32_t>(__cvta_generic_to_shared(&szring[0].v[lane]));
  auto issue = [&](int slot) {  // one stage into ring slot `slot`; the caller commits
    const uint32_t w = wdst + slot * static_cast<uint32_t>(sizeof(Stage));
    if constexpr ((kKnockout & kKoLoad) == 0) {
      cp_async16_hint_s(w, wsrc, policy);
      cp_async16_hint_s(w + 512, wsrc + tile_step, policy);
    }
    wsrc += 2 * tile_step;
    if ((kKnockout & kKoScales) == 0 && sz_lane) cp_async16_s(szdst + slot * static_cast<uint32_t>(sizeof(Sz)), szsrc);
    szsrc += szstep;
  };
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s_lo + s < s_hi) issue(s);
    cp_async_commit();
  }
  // v7, PREFETCH: the rest of the CTA's slice toward L2 now, so the stages past the ring's first
  // ones find their weights there. Run by the TMA unit while this kernel waits for the one before it
  // (PDL: the decode of a layer otherwise starts its DRAM stream only when the glue kernel before it
  // ends), and without PDL it puts the whole slice in flight at once where the ring alone holds
  // STAGES - 1 stages per warp. The CTA's 64 rows are 64 / TN layout tiles, each contiguous over K:
  // thread t prefetches tile t's stages [s_lo + STAGES - 1, s_cta).
  if constexpr (SZR) {
    const int from = s_lo + STAGES - 1, rows0 = blockIdx.x * (kWarps * 16) + threadIdx.x * a.TN;
    if (a.prefetch && a.TN <= kWarps * 16 && threadIdx.x < kWarps * 16 / a.TN && rows0 < a.NP && from < s_cta)
      prefetch_l2(a.qw + ((long long)(rows0 / a.TN) * a.KT + 2 * from) * a.TN * 2,
                  static_cast<uint32_t>(2 * (s_cta - from)) * a.TN * 32);
  }
  pdl_wait();  // as v5: only weights, scales and zeros are read before it
  // while the ring's first stages load
  sum_x<T, NTOK, NG>(xsum, xsrc, has_tok, s_cta - s_lo, 0, s_cta - s_lo, warp, g, c);
  __syncthreads();  // every warp reads every warp's sums
  float out[NTOK][4];
#pragma unroll
  for (int t = 0; t < NTOK; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) out[t][i] = 0.f;
  GroupParams<T, NG, ASYM> cur;
  if (!SZR && s_lo < s_hi) cur.load(ssrc, zsrc, a.TN);
  // one stage j with its x fragments: wait for its ring slot, refill the slot the last stage freed,
  // the weight MMAs, out += s * acc - s * (M + z) * sum x (as v5)
  // rd: the stage's ring slot (a constant where the caller's loop is unrolled by STAGES)
  auto step = [&](int j, const uint4 (&xv)[NTOK][2][2], int rd) {
    const int wr = rd == 0 ? STAGES - 1 : rd - 1;  // the slot the last stage freed
    GroupParams<T, NG, ASYM> nxt;
    if constexpr (!SZR) {
      ssrc += sz_step;
      if (ASYM) zsrc += sz_step;
      if (s_lo + j + 1 < s_hi) nxt.load(ssrc, zsrc, a.TN);
    }
    cp_async_wait<STAGES - 2>();
    __syncwarp();  // as v5: lane l's chunks are read by other lanes; slot wr is free
    if (s_lo + j + STAGES - 1 < s_hi) issue(wr);
    cp_async_commit();
    if constexpr ((kKnockout & kKoMath) != 0) return;
    float acc[2][NTOK][4];
    weight_mma<T, NTOK, SZR && NG == 1>(acc, ring[rd], xv, g, c);  // v7: one accumulator per group
    if (!SZR && NG == 1) {
#pragma unroll
      for (int t = 0; t < NTOK; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[0][t][i] += acc[1][t][i];
    }
#pragma unroll
    for (int gi = 0; gi < NG; ++gi) {
      float sc[2], ol, oh;
      if constexpr (SZR) {
        float off[2];
        slot_scale_offset<T, NG, ASYM>(szring[rd], gi, g, sc, off);
        ol = off[0], oh = off[1];
      } else {
        sc[0] = cur.s[gi][0], sc[1] = cur.s[gi][1];
        ol = sc[0] * (Half16<T>::kBase + cur.z[gi][0]), oh = sc[1] * (Half16<T>::kBase + cur.z[gi][1]);
      }
#pragma unroll
      for (int t = 0; t < NTOK; ++t) {
        const float2 xs = xsum[((j * NG + gi) * NTOK + t) * 4 + c];
        out[t][0] = fmaf(sc[0], acc[gi][t][0], fmaf(-ol, xs.x, out[t][0]));
        out[t][1] = fmaf(sc[0], acc[gi][t][1], fmaf(-ol, xs.y, out[t][1]));
        out[t][2] = fmaf(sc[1], acc[gi][t][2], fmaf(-oh, xs.x, out[t][2]));
        out[t][3] = fmaf(sc[1], acc[gi][t][3], fmaf(-oh, xs.y, out[t][3]));
      }
    }
    if constexpr (!SZR) cur = nxt;
  };
  if constexpr (SZR) {
    // v7: x one stage ahead, in two register sets taken in turn (the loop unrolled by two, so each
    // set keeps its registers; no copies). x is an L2 hit (every CTA reads it) and was waited on
    // ~40 instructions after its loads: a long-scoreboard stall per stage and warp. Unpredicated
    // loads (w4_stage.cuh); the stage past the CTA's last is not loaded (past K at the last split).
    const int n = s_hi - s_lo;
    const uint4* xcur[NTOK];
#pragma unroll
    for (int t = 0; t < NTOK; ++t) xcur[t] = xsrc[t];
    auto ahead = [&](uint4 (&xv)[NTOK][2][2], int j) {
      if (j < n) {
        load_x<NTOK, true>(xv, xcur, has_tok, 0);
#pragma unroll
        for (int t = 0; t < NTOK; ++t) xcur[t] += kStageK / 8;
      }
    };
    uint4 xa[NTOK][2][2], xb[NTOK][2][2];
    ahead(xa, 0);
    for (int j0 = 0; j0 < n; j0 += STAGES) {  // STAGES is even: the x sets alternate within
#pragma unroll
      for (int u = 0; u < STAGES; u += 2) {
        ahead(xb, j0 + u + 1);
        step(j0 + u, xa, u);
        if (j0 + u + 1 >= n) break;
        ahead(xa, j0 + u + 2);
        step(j0 + u + 1, xb, u + 1);
        if (j0 + u + 2 >= n) break;
      }
    }
  } else {
    for (int j = 0, rd = 0; s_lo + j < s_hi; ++j, rd = rd + 1 == STAGES ? 0 : rd + 1) {
      uint4 xv[NTOK][2][2];
      load_x<NTOK>(xv, xsrc, has_tok, j * (kStageK / 8));
      step(j, xv, rd);
    }
  }
  cp_async_wait<0>();
  // CL: the warp's drained ring is the cluster store's scratch
  store_tile<T, NTOK>(a.o, out, n0, g, c, active, CL ? reinterpret_cast<float4*>(ring) : nullptr);
}

}  // namespace
