// The grouped MoE decode's few-token kernels (moe_w4.cu; MoECudaConfig.gate_up_by_pair and
// down_by_token). At T = 1 the routed kernels' CTAs spend their time in chains of dependent loads,
// not in streaming: the top-k ids and a routing pass before the first weight copy, x or h read
// stage by stage for the sums of x, and the split-K store's atomics, fence, counter and last CTA
// (4.5 us of the layer's 20.4 on the H100, knockouts, run 13). Here a CTA is 8 to 32 warps on 16
// rows:
//   gate_up by pair   CTA (16 rows of gate|up, pair), 8 warps: the pair is blockIdx.z, so x's row
//                     is copied (cp.async, one chunk a thread) before the id is even read; each warp
//                     takes an eighth of K; h = silu(g) * u after a shared-memory sum in warp order
//   down by token     CTA (16 rows of y, token): its W = 8, 16 or 32 warps take the token's top-k pairs
//                     (k divides W), W / k warps splitting each pair's K range; h's slices are
//                     copied once after pdl_wait; y = sum_k w * round16(down) in top-k order in
//                     shared memory. Once gate_up is done, what is left is this CTA's MMAs: at one
//                     CTA per SM (T = 1) and 8 warps a warp issues every ~7 cycles (ncu, H200),
//                     so 16 warps halve each warp's stages. x_per_stage (16 warps): h's fragments
//                     from L1 stage by stage and q - z in the MMA's operands (stage_qz, the dense
//                     rows with x per stage's), no staged slice or sums of h
// No workspace, counter or routing pass. Each pair's weights are read per pair (per token for
// down): tokens that share an expert read it again, so the rule keeps these to a few tokens.
// Roundings as the routed kernels' (the loop of dense linears). The sums of x per group come from
// the staged row in shared memory: lanes add 8 values each and shuffle within the group.
// Anonymous namespace, as common.cuh: each .cu is its own shared library.
#pragma once
#include "common.cuh"
#include "moe_route.cuh"
#include "moe_stage.cuh"
#include "w4_feed.cuh"  // DnFeed, ring_prologue, token_smem, row_sums, ring_pass (shared with the decode by rows)
#include "w4_stage.cuh"

namespace {

constexpr int kTokWarps = 8;  // gate_up by pair's warps; down by token's: 8, 16 or 32, which top-k must divide
constexpr int kMaxDownSlots = 128;  // down by token's warps x ring slots: 32 x 8 slots (282 KiB) pass the SM's 227

// The ring slots' alignment in these kernels: a diagnostic build's knob (-DTP_MOE_SLOT_ALIGN=128,
// benchmarks/device/build_ab.py --src moe_w4.cu). At 16 a slot is its bytes (DnSlot 1072, GuSlot
// 2144 at group 128, asym), so most slots start off a 128-byte row of shared memory; the dense rows
// (w4_rowsx.cuh) ran 3.0% faster with theirs on 128-byte rows (run 23). Here T = 1 measured -2.0%,
// within the A/B's spread (the routed kernels, which it leaves untouched, moved -1.5%; run 24).
#ifndef TP_MOE_SLOT_ALIGN
#define TP_MOE_SLOT_ALIGN 16
#endif
template <class Slot>
using TokSlot = AlignedSlot<Slot, TP_MOE_SLOT_ALIGN>;

template <typename T, int STAGES, int G, bool ASYM>
__global__ void __launch_bounds__(kTokWarps * 32) moe_gate_up_pair_kernel(const MoeArgs a) {
  constexpr int NG = kStageK / G;
  using Slot = TokSlot<GuSlot<NG, ASYM>>;
  // a name of its own: moe_w4.cu's other kernels declare `smem` at uint4's alignment
  extern __shared__ __align__(TP_MOE_SLOT_ALIGN) uint4 smem_t[];
  uint4* smem = smem_t;
  __shared__ float part[kTokWarps][2][16];
  pdl_trigger();  // the down grid may start streaming its weights once every gate_up CTA runs
  // x and the ids from here on: a no-op unless launched as a PDL secondary (pdl_gu), whose CTAs are
  // then placed while the kernel before it (the router, the previous layer's down) finishes
  pdl_wait();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const Lin& L = a.gate;
  const long long pair = blockIdx.z;
  uint4* xs = smem;  // x's row, all K
  const uint4* xrow = reinterpret_cast<const uint4*>(static_cast<const T*>(a.x) + pair / a.topk * a.stride_xm);
  for (int i = threadIdx.x; i < L.K / 8; i += blockDim.x) cp_async16(xs + i, xrow + i);
  cp_async_commit();
  const int e = expert_of(a, pair);
  const bool valid = e >= 0 && e < a.E;
  const int stages = L.K / kStageK, per_w = (stages + kTokWarps - 1) / kTokWarps;
  const int w_lo = min(stages, warp * per_w), nst = valid ? min(stages, w_lo + per_w) - w_lo : 0;
  Slot* ring = reinterpret_cast<Slot*>(smem + L.K / 8) + warp * STAGES;  // K * 2 bytes in: 128-byte aligned
  float2* xsum = reinterpret_cast<float2*>(reinterpret_cast<Slot*>(smem + L.K / 8) + kTokWarps * STAGES) +
                 warp * per_w * NG * 4;
  const int n0 = blockIdx.x * 16;
  GateUpFeed<T, NG, ASYM> feed(a, valid ? e : 0, n0, w_lo, lane);
  auto issue = [&](int slot) { feed.issue(ring[slot], lane); };
  ring_prologue<STAGES>(nst, issue);
  cp_async_wait<STAGES - 1>();  // x's group, the oldest
  __syncthreads();              // every thread's chunk of x
  row_sums<T, NG>(xsum, xs + w_lo * 16, nst, 1, 0, lane);
  __syncwarp();
  float og[1][4] = {{0.f, 0.f, 0.f, 0.f}}, ou[1][4] = {{0.f, 0.f, 0.f, 0.f}};
  ring_pass<STAGES>(nst, xs + w_lo * 16, c, issue, [&](int j, int rd, const Xv& x) {
    float acc[2][1][4];
    weight_mma<T, 1>(acc, ring[rd].w[0], x.v, g, c);
    group_fma<T, 1, NG, ASYM>(og, acc, xsum + j * NG * 4, ring[rd].sz[0], g, c);
    weight_mma<T, 1>(acc, ring[rd].w[1], x.v, g, c);
    group_fma<T, 1, NG, ASYM>(ou, acc, xsum + j * NG * 4, ring[rd].sz[1], g, c);
  });
  cp_async_wait<0>();
  if (c == 0) {  // token column 0 is thread c = 0's elements 0 (row g) and 2 (row g + 8)
    part[warp][0][g] = og[0][0], part[warp][0][g + 8] = og[0][2];
    part[warp][1][g] = ou[0][0], part[warp][1][g + 8] = ou[0][2];
  }
  __syncthreads();
  const int row = n0 + threadIdx.x;
  if (valid && threadIdx.x < 16 && row < L.N) {
    float gv = 0.f, uv = 0.f;
    for (int w = 0; w < kTokWarps; ++w) gv += part[w][0][threadIdx.x], uv += part[w][1][threadIdx.x];
    static_cast<T*>(a.h)[pair * L.N + row] = silu_mul<T>(gv, uv);
  }
}

template <typename T, int STAGES, int G, bool ASYM, int W, bool XS = false>
__global__ void __launch_bounds__(W * 32) moe_down_token_kernel(const MoeArgs a) {
  constexpr int NG = kStageK / G;
  using Slot = TokSlot<DnSlot<NG, ASYM>>;
  extern __shared__ __align__(TP_MOE_SLOT_ALIGN) uint4 smem_t[];
  uint4* smem = smem_t;
  __shared__ float part[W][16];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int ks = W / a.topk, kw = warp % ks;
  const long long pair = (long long)blockIdx.y * a.topk + warp / ks;
  const int e = expert_of(a, pair);
  const bool valid = e >= 0 && e < a.E;  // as route_block: an id out of range adds nothing
  const Lin& L = a.down;
  const int n0 = blockIdx.x * 16;
  const int stages = L.K / kStageK, per_w = (stages + ks - 1) / ks;
  const int w_lo = min(stages, kw * per_w), nst = valid ? min(stages, w_lo + per_w) - w_lo : 0;
  Slot* ring = reinterpret_cast<Slot*>(smem) + warp * STAGES;
  DnFeed<T, NG, ASYM> feed(L, valid ? e : 0, n0, w_lo, lane);
  auto issue = [&](int slot) { feed.issue(ring[slot], lane); };
  ring_prologue<STAGES>(nst, issue);
  pdl_wait();  // h from here on
  const uint4* hrow = reinterpret_cast<const uint4*>(static_cast<const T*>(a.h) + pair * L.K + w_lo * kStageK);
  float out[1][4] = {{0.f, 0.f, 0.f, 0.f}};
  if constexpr (XS) {  // h's fragments from L1 stage by stage; every lane reads the pair's row (all 8 columns)
    const uint4* xsrc[1] = {hrow + 2 * c};
    const bool has[1] = {true};
    ring_pass_x<STAGES, 1>(
        nst, [&](int j, uint4(&xv)[1][2][2]) { load_x<1, true>(xv, xsrc, has, j * (kStageK / 8)); }, issue,
        [&](int, int rd, const uint4(&xv)[1][2][2]) {
          stage_qz<T, 1, NG, ASYM>(out, ring[rd].w, ring[rd].sz, xv, g, c);
        });
  } else {
    float2* tables = reinterpret_cast<float2*>(reinterpret_cast<Slot*>(smem) + W * STAGES);
    float2* xsum = tables + warp * per_w * NG * 4;
    uint4* xs = reinterpret_cast<uint4*>(tables + W * per_w * NG * 4) + warp * per_w * 16;  // the warp's slice of h
    for (int i = lane; i < nst * 16; i += 32) cp_async16(xs + i, hrow + i);
    cp_async_commit();
    cp_async_wait<0>();  // h's slice (and the ring's first stages, long since in: they were copied before the wait)
    __syncwarp();
    row_sums<T, NG>(xsum, xs, nst, 1, 0, lane);
    __syncwarp();
    ring_pass<STAGES>(nst, xs, c, issue, [&](int j, int rd, const Xv& x) {
      float acc[2][1][4];
      weight_mma<T, 1>(acc, ring[rd].w, x.v, g, c);
      group_fma<T, 1, NG, ASYM>(out, acc, xsum + j * NG * 4, ring[rd].sz, g, c);
    });
  }
  cp_async_wait<0>();
  if (c == 0) part[warp][g] = out[0][0], part[warp][g + 8] = out[0][2];
  __syncthreads();
  pdl_trigger();  // at the store, as the dense decode kernels (pdl.py): the next grid may be placed
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
