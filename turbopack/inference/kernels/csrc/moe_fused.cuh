// The grouped MoE decode's layer in one launch (moe_w4.cu; MoECudaConfig.fused): at one token the
// few-token kernels' layer is two launches, each a ramp, one DRAM round trip and a drain (T = 1:
// 39% of copy bandwidth on the H200, 50% on the H100, run 23-24), and down's CTAs cannot be placed
// (to stream their weights under PDL) while gate_up's hold the SMs. Here a grid of at most one CTA
// per SM copies ALL of its weights of both matmuls into shared memory at once (Qwen3-30B-A3B:
// 384 (pair, 16-row) gate|up units and 128 (token, 16-row) down units on 128 CTAs, 3 + 1 each:
// 151 KiB), so the layer's bytes are in flight from the first microsecond:
//   gate_up   units u = blockIdx.x + i * gridDim.x (i < U): (pair, 16 rows of gate and up); a unit's
//             K in W / U warps' contiguous stage ranges, one cp.async group per stage so that a
//             warp's MMAs follow its stages in; parts summed in warp order in shared memory, h =
//             silu(g) * u stored (the by-pair kernel's roundings)
//   barrier   every CTA's h stored before any CTA reads h: an arrival counter (fence, atomic add,
//             acquire spin; the last CTA through re-zeroes it). Safe because the grid is at most
//             one CTA per SM (cuda_moe.fused_plan) and nothing it waits for waits for it: a PDL
//             secondary can start only once every CTA of this grid has run its trigger
//   down      units v = blockIdx.x + i * gridDim.x (i < Ud): (token, 16 rows of y), its top-k pairs'
//             K in W / (Ud * k) warps each; the weights were copied before the barrier (in the
//             same shared memory, behind gate_up's), h is read through L2 (ld.global.cg: other
//             SMs wrote it in this launch, so not the non-coherent path); y = sum_k w * round16(down)
//             in top-k order (down by token's roundings)
// Both matmuls read x (h) per stage with q - z in the MMA's operands (stage_qz): no sums of x.
// Anonymous namespace, as common.cuh: each .cu is its own shared library.
#pragma once
#include "common.cuh"
#include "moe_route.cuh"
#include "moe_stage.cuh"
#include "w4_feed.cuh"
#include "w4_stage.cuh"

namespace {

constexpr int kFusedWarps = 16;

// cp.async.wait_group with a run-time count: at most n of this thread's groups still pending (n >
// 7 waits for 7, which is only stricter)
__device__ __forceinline__ void cp_async_wait_upto(int n) {
  switch (n) {
    case 0: cp_async_wait<0>(); break;
    case 1: cp_async_wait<1>(); break;
    case 2: cp_async_wait<2>(); break;
    case 3: cp_async_wait<3>(); break;
    case 4: cp_async_wait<4>(); break;
    case 5: cp_async_wait<5>(); break;
    case 6: cp_async_wait<6>(); break;
    default: cp_async_wait<7>(); break;
  }
}

__device__ __forceinline__ int ld_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %globaltimer;\n" : "=l"(t));
  return t;
}

// Every CTA of the grid past this point only once all have reached it (their global stores before
// it visible to all after it). ctr[0] counts arrivals, ctr[1] departures; the last to depart
// re-zeroes both (the workspace's contract), after which no CTA reads them again this launch. A CTA
// that waits 2 s traps: a grid that cannot be resident at once (not one the launcher sizes) fails
// the launch (a CUDA error the caller raises) instead of hanging the process.
__device__ __forceinline__ void grid_barrier(int* ctr) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const int n = gridDim.x;
    __threadfence();
    atomicAdd(ctr, 1);
    const unsigned long long t0 = global_ns();
    while (ld_acquire(ctr) < n) {
      __nanosleep(20);
      if (global_ns() - t0 > 2000000000ull) __trap();
    }
    if (atomicAdd(ctr + 1, 1) == n - 1) ctr[0] = 0, ctr[1] = 0;
  }
  __syncthreads();
}

// h's fragments of one stage (load_x's order, every lane the pair's row) through L2
__device__ __forceinline__ void load_h(uint4 (&xv)[1][2][2], const uint4* src) {
#pragma unroll
  for (int j = 0; j < 4; ++j) xv[0][j >> 1][j & 1] = __ldcg(src + 8 * (j >> 1) + (j & 1));
}

template <typename T, int G, bool ASYM>
__global__ void __launch_bounds__(kFusedWarps * 32, 1) moe_fused_kernel(const MoeArgs a) {
  constexpr int NG = kStageK / G, W = kFusedWarps;
  using GSlot = GuSlot<NG, ASYM>;
  using DSlot = DnSlot<NG, ASYM>;
  extern __shared__ uint4 smem[];
  __shared__ float part_gu[W][2][16];
  __shared__ float part_d[W][16];
  pdl_trigger();
  pdl_wait();  // x and the ids from here on
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int nb = gridDim.x, k = a.topk;
  const int s_gu = a.gate.K / kStageK, s_d = a.down.K / kStageK;
  const int tiles_gu = (a.gate.N + 15) / 16, tiles_d = (a.down.N + 15) / 16;
  const int n_gu = a.T * k * tiles_gu, n_d = a.T * tiles_d;
  const int U = (n_gu + nb - 1) / nb, Ud = (n_d + nb - 1) / nb;
  GSlot* gslots = reinterpret_cast<GSlot*>(smem);
  DSlot* dslots = reinterpret_cast<DSlot*>(gslots + U * s_gu);

  // this warp's gate_up share: unit i = warp / kw, stages [lo, lo + nst) of its K
  const int kw = W / U, per = (s_gu + kw - 1) / kw, ui = warp / kw;
  const int u = blockIdx.x + ui * nb;
  const bool gu_unit = ui < U && u < n_gu;
  const long long pair = gu_unit ? u / tiles_gu : 0;
  const int n0 = gu_unit ? (u % tiles_gu) * 16 : 0;
  const int e = gu_unit ? expert_of(a, pair) : -1;
  const bool gu_ok = e >= 0 && e < a.E;
  const int lo = min(s_gu, (warp % kw) * per), nst = gu_ok ? min(s_gu, lo + per) - lo : 0;
  {
    GateUpFeed<T, NG, ASYM> feed(a, gu_ok ? e : 0, n0, lo, lane);
    for (int s = 0; s < nst; ++s) {
      feed.issue(gslots[ui * s_gu + lo + s], lane);
      cp_async_commit();
    }
  }
  // its down share: unit di = warp / (k * kwd), top-k pair j, stages [dlo, dlo + dnst) of its K
  const int kwd = W / (Ud * k), per_d = (s_d + kwd - 1) / kwd;
  const int di = warp / (k * kwd), j = warp / kwd % k;
  const int v = blockIdx.x + di * nb;
  const bool d_unit = di < Ud && v < n_d;
  const int tok = d_unit ? v / tiles_d : 0, m0 = d_unit ? (v % tiles_d) * 16 : 0;
  const long long dpair = (long long)tok * k + j;
  const int de = d_unit ? expert_of(a, dpair) : -1;
  const bool d_ok = de >= 0 && de < a.E;
  const int dlo = min(s_d, (warp % kwd) * per_d), dnst = d_ok ? min(s_d, dlo + per_d) - dlo : 0;
  DSlot* dmine = dslots + (di * k + j) * s_d + dlo;
  {
    DnFeed<T, NG, ASYM> feed(a.down, d_ok ? de : 0, m0, dlo, lane);
    for (int s = 0; s < dnst; ++s) feed.issue(dmine[s], lane);
    cp_async_commit();  // one group (maybe empty): the gate_up waits below count it
  }

  float og[1][4] = {{0.f, 0.f, 0.f, 0.f}}, ou[1][4] = {{0.f, 0.f, 0.f, 0.f}};
  const uint4* xsrc[1] = {reinterpret_cast<const uint4*>(static_cast<const T*>(a.x) + pair / k * a.stride_xm) +
                          lo * (kStageK / 8) + 2 * c};
  const bool has[1] = {true};
  for (int s = 0; s < nst; ++s) {
    uint4 xv[1][2][2];
    load_x<1, true>(xv, xsrc, has, s * (kStageK / 8));
    cp_async_wait_upto(nst - s);  // this stage's group in; later stages' and down's may still fly
    __syncwarp();                  // lane l's chunks are read by the other lanes
    const GSlot& sl = gslots[ui * s_gu + lo + s];
    stage_qz<T, 1, NG, ASYM>(og, sl.w[0], sl.sz[0], xv, g, c);
    stage_qz<T, 1, NG, ASYM>(ou, sl.w[1], sl.sz[1], xv, g, c);
  }
  if (c == 0) {  // token column 0 is thread c = 0's elements 0 (row g) and 2 (row g + 8)
    part_gu[warp][0][g] = og[0][0], part_gu[warp][0][g + 8] = og[0][2];
    part_gu[warp][1][g] = ou[0][0], part_gu[warp][1][g + 8] = ou[0][2];
  }
  __syncthreads();
  if (threadIdx.x < U * 16) {  // unit threadIdx.x / 16, row threadIdx.x % 16: its kw warps' parts in order
    const int i = threadIdx.x / 16, r = threadIdx.x % 16, uu = blockIdx.x + i * nb;
    const int row = (uu % tiles_gu) * 16 + r;
    if (uu < n_gu && row < a.gate.N) {
      const long long p = uu / tiles_gu;
      const int pe = expert_of(a, p);
      float gv = 0.f, uv = 0.f;
      for (int w = i * kw; w < (i + 1) * kw; ++w) gv += part_gu[w][0][r], uv += part_gu[w][1][r];
      if (pe >= 0 && pe < a.E) static_cast<T*>(a.h)[p * a.gate.N + row] = silu_mul<T>(gv, uv);
    }
  }
  grid_barrier(a.counters);

  float out[1][4] = {{0.f, 0.f, 0.f, 0.f}};
  cp_async_wait<0>();
  __syncwarp();
  const uint4* hsrc = reinterpret_cast<const uint4*>(static_cast<const T*>(a.h) + dpair * a.down.K) +
                      dlo * (kStageK / 8) + 2 * c;
  for (int s = 0; s < dnst; ++s) {
    uint4 hv[1][2][2];
    load_h(hv, hsrc + s * (kStageK / 8));
    stage_qz<T, 1, NG, ASYM>(out, dmine[s].w, dmine[s].sz, hv, g, c);
  }
  if (c == 0) part_d[warp][g] = out[0][0], part_d[warp][g + 8] = out[0][2];
  __syncthreads();
  if (threadIdx.x < Ud * 16) {  // unit threadIdx.x / 16: y = sum_k w * round16(pair's down), top-k order
    const int i = threadIdx.x / 16, r = threadIdx.x % 16, vv = blockIdx.x + i * nb;
    const int row = (vv % tiles_d) * 16 + r;
    if (vv < n_d && row < a.down.N) {
      const long long t = vv / tiles_d;
      float acc = 0.f;
      for (int jj = 0; jj < k; ++jj) {
        float sum = 0.f;
        for (int w = (i * k + jj) * kwd; w < (i * k + jj + 1) * kwd; ++w) sum += part_d[w][r];
        const long long p = t * k + jj;
        const float wt = a.wts32 ? static_cast<const float*>(a.wts)[p] : Half16<T>::to_f(static_cast<const T*>(a.wts)[p]);
        acc = fmaf(round16<T>(sum), wt, acc);
      }
      static_cast<T*>(a.y)[t * a.down.N + row] = Half16<T>::from_f(acc);
    }
  }
}

}  // namespace
