// The grouped MoE decode's down at a few tokens (moe_w4.cu; MoECudaConfig.down_by_token): a CTA per
// (16 rows of y, token) whose 8 warps take the token's top-k pairs, 8 / k warps splitting each
// pair's K range. Every warp streams 16 rows of its expert's down, and the CTA sums the k products
// in shared memory in top-k order, with moe_down_kernel's roundings (each pair's fp32 sum to 16
// bits, times its routing weight, an fp32 sum in top-k order): y needs no workspace, no counter and
// no last CTA. The knockouts put the split-K store, which this replaces, at 4.5 us of the layer's
// 20.4 at T = 1 on the H100 (run 13). Each pair's weights are read once per token: at T > 1 tokens
// that share an expert read it again (from L2 at best), so the rule keeps it to T <= 2.
// Anonymous namespace, as common.cuh: each .cu is its own shared library.
#pragma once
#include "common.cuh"
#include "moe_route.cuh"
#include "moe_stage.cuh"
#include "w4_stage.cuh"

namespace {

constexpr int kTokWarps = 8;  // = the largest top-k it takes; k must divide it (the launcher checks)

template <int NG, bool ASYM>
struct DnSlot {
  Stage w;
  SzSlot<NG, ASYM> sz;
};

// shared memory: the ring [kTokWarps][STAGES], then each warp's sums of x (per_w stages)
template <int NG, bool ASYM>
constexpr int down_token_smem(int stages, int per_w) {
  return kTokWarps * (stages * static_cast<int>(sizeof(DnSlot<NG, ASYM>)) + per_w * NG * 4 * 8);
}

template <typename T, int STAGES, int G, bool ASYM>
__global__ void __launch_bounds__(kTokWarps * 32) moe_down_token_kernel(const MoeArgs a) {
  constexpr int NG = kStageK / G;
  constexpr int kChunks = SzSlot<NG, ASYM>::kChunks;
  extern __shared__ uint4 smem[];
  __shared__ float part[kTokWarps][16];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int ks = kTokWarps / a.topk, kw = warp % ks;
  const long long pair = (long long)blockIdx.y * a.topk + warp / ks;
  const int e = a.ids64 ? static_cast<int>(static_cast<const long long*>(a.ids)[pair]) : static_cast<const int*>(a.ids)[pair];
  const bool valid = e >= 0 && e < a.E;  // as route_block: an id out of range adds nothing
  const Lin& L = a.down;
  const int n0 = blockIdx.x * 16;
  const int stages = L.K / kStageK, per_w = (stages + ks - 1) / ks;
  const int w_lo = min(stages, kw * per_w), nst = valid ? min(stages, w_lo + per_w) - w_lo : 0;
  DnSlot<NG, ASYM>* ring = reinterpret_cast<DnSlot<NG, ASYM>*>(smem) + warp * STAGES;
  float2* xsum = reinterpret_cast<float2*>(reinterpret_cast<DnSlot<NG, ASYM>*>(smem) + kTokWarps * STAGES) +
                 warp * per_w * NG * 4;
  const bool sz_lane = lane < kChunks;
  Feed<T, NG> f;
  f.init(L, valid ? e : 0, n0, w_lo, lane, sz_lane ? lane : 0);
  const long long tile_step = (long long)L.TN * 2;
  const uint64_t policy = l2_evict_first();
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < nst) f.issue(ring[s].w, &ring[s].sz.v[lane], sz_lane, tile_step, lane, policy);
    cp_async_commit();
  }
  pdl_wait();  // h from here on
  const uint4* xsrc[1] = {reinterpret_cast<const uint4*>(static_cast<const T*>(a.h) + pair * L.K + w_lo * kStageK) + 2 * c};
  const bool has[1] = {valid};
  // the warp's own table (its own h row): sum_x takes stages j = w mod kWarps, so all four passes
#pragma unroll 1
  for (int w = 0; w < kWarps; ++w) sum_x<T, 1, NG>(xsum, xsrc, has, nst, 0, nst, w, g, c);
  __syncwarp();
  float out[1][4] = {{0.f, 0.f, 0.f, 0.f}};
  int rd = 0, wr = STAGES - 1;
  for (int j = 0; j < nst; ++j) {
    uint4 xv[1][2][2];
    load_x<1>(xv, xsrc, has, j * (kStageK / 8));
    cp_async_wait<STAGES - 2>();
    __syncwarp();
    if (j + STAGES - 1 < nst) f.issue(ring[wr].w, &ring[wr].sz.v[lane], sz_lane, tile_step, lane, policy);
    cp_async_commit();
    wr = wr + 1 == STAGES ? 0 : wr + 1;
    if constexpr ((kKnockout & kKoMath) != 0) {
      rd = rd + 1 == STAGES ? 0 : rd + 1;
      continue;
    }
    float acc[2][1][4];
    weight_mma<T, 1>(acc, ring[rd].w, xv, g, c);
    group_fma<T, 1, NG, ASYM>(out, acc, xsum + j * NG * 4, ring[rd].sz, g, c);
    rd = rd + 1 == STAGES ? 0 : rd + 1;
  }
  cp_async_wait<0>();
  if (c == 0) {  // token column 0 is thread c = 0's elements 0 (row g) and 2 (row g + 8)
    part[warp][g] = out[0][0];
    part[warp][g + 8] = out[0][2];
  }
  __syncthreads();
  const int row = n0 + threadIdx.x;
  if (threadIdx.x < 16 && row < L.N) {
    float acc = 0.f;
    for (int j = 0; j < a.topk; ++j) {
      float v = 0.f;
      for (int w = 0; w < ks; ++w) v += part[j * ks + w][threadIdx.x];
      const long long p = (long long)blockIdx.y * a.topk + j;
      const float wt = a.wts32 ? static_cast<const float*>(a.wts)[p] : Half16<T>::to_f(static_cast<const T*>(a.wts)[p]);
      acc = fmaf(round16<T>(v), wt, acc);
    }
    static_cast<T*>(a.y)[(long long)blockIdx.y * L.N + row] = Half16<T>::from_f(acc);
  }
}

}  // namespace
