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

// knockout bit of this kernel alone (common.cuh's list): the grid barrier (h then read before all
// of it is stored)
constexpr int kKoSync = 32;

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

// arrival: a release at gpu scope (fence.acq_rel, SASS MEMBAR.ALL.GPU, before the add), cumulative
// over the CTA's h stores that the __syncthreads before it ordered; not __threadfence's fence.sc
// (MEMBAR.SC.GPU), whose single global order the barrier does not need
__device__ __forceinline__ void red_release_add(int* p, int v) {
  asm volatile("red.release.gpu.global.add.s32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
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
// it visible to all after it: a release add, an acquire spin). ctr[0] counts arrivals, ctr[1]
// departures; the last to depart re-zeroes both (the workspace's contract), after which no CTA
// reads them again this launch. A CTA that waits 2 s traps: a grid that cannot be resident at once
// (not one the launcher sizes) fails the launch (a CUDA error the caller raises) instead of
// hanging the process.
__device__ __forceinline__ void grid_barrier(int* ctr) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const int n = gridDim.x;
    red_release_add(ctr, 1);
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

// The layer's units over the grid (cuda_moe.fused_plan sized it): U gate|up and Ud down units a
// CTA, kw warps to a gate|up unit and kwd to each of a down unit's top-k pairs. U, Ud, kw and kwd
// come from the launcher (MoeArgs.fused_*): four fewer run-time divisions in the chain of them that
// every warp runs before its first copy (which needs its expert's id)
struct FusedGrid {
  int nb, k, s_gu, s_d, tiles_gu, tiles_d, n_gu, n_d, U, Ud, kw, kwd;
  __device__ __forceinline__ explicit FusedGrid(const MoeArgs& a) {
    nb = gridDim.x, k = a.topk, s_gu = a.gate.K / kStageK, s_d = a.down.K / kStageK;
    tiles_gu = (a.gate.N + 15) / 16, tiles_d = (a.down.N + 15) / 16;
    n_gu = a.T * k * tiles_gu, n_d = a.T * tiles_d;
    U = a.fused_u, Ud = a.fused_ud, kw = a.fused_kw, kwd = a.fused_kwd;
  }
};

// A warp's share of one matmul: the pair it reads x (h) for, its first row, the expert (0 where
// it has none: nst = 0), stages [lo, lo + nst) of K and the first of its slots
struct Share {
  int pair;  // T * k <= kMaxPairs
  int row0, e, lo, nst, slot;
};

// Part `part` of `parts` contiguous stage ranges of a K of `stages`, for pair `pair` (its expert
// read where the warp has a unit), rows from row0; the unit's slots start at `first`
__device__ __forceinline__ Share share(const MoeArgs& a, bool unit, int pair, int row0, int stages, int parts,
                                       int part, int first) {
  const int per = (stages + parts - 1) / parts, lo = min(stages, part * per);
  const int e = unit ? expert_of(a, pair) : -1;
  const bool ok = e >= 0 && e < a.E;  // as route_block: an id out of range adds nothing
  return Share{pair, row0, ok ? e : 0, lo, ok ? min(stages, lo + per) - lo : 0, first + lo};
}
// gate|up: unit i = warp / kw (pair, 16 rows), the warp's part warp % kw of its K
__device__ __forceinline__ Share gate_up_share(const MoeArgs& a, const FusedGrid& f, int warp) {
  const int i = warp / f.kw, u = blockIdx.x + i * f.nb;
  const bool unit = i < f.U && u < f.n_gu;
  return share(a, unit, unit ? u / f.tiles_gu : 0, unit ? u % f.tiles_gu * 16 : 0, f.s_gu, f.kw, warp % f.kw,
               i * f.s_gu);
}
// down: unit i = warp / (k kwd) (token, 16 rows), its top-k pair j = warp / kwd % k, part warp % kwd
__device__ __forceinline__ Share down_share(const MoeArgs& a, const FusedGrid& f, int warp) {
  const int i = warp / (f.k * f.kwd), j = warp / f.kwd % f.k, v = blockIdx.x + i * f.nb;
  const bool unit = i < f.Ud && v < f.n_d;
  const int tok = unit ? v / f.tiles_d : 0;
  return share(a, unit, tok * f.k + j, unit ? v % f.tiles_d * 16 : 0, f.s_d, f.kwd, warp % f.kwd,
               (i * f.k + j) * f.s_d);
}

// h = silu(g) * u of the CTA's gate|up units from the warps' parts (in warp order), one thread a row
template <typename T, int W>
__device__ __forceinline__ void store_h(const MoeArgs& a, const FusedGrid& f, const float (&part)[W][2][16]) {
  if (threadIdx.x >= f.U * 16) return;
  const int i = threadIdx.x / 16, r = threadIdx.x % 16, u = blockIdx.x + i * f.nb;
  const int row = u % f.tiles_gu * 16 + r;
  if (u >= f.n_gu || row >= a.gate.N) return;
  const long long p = u / f.tiles_gu;
  const int e = expert_of(a, p);
  float gv = 0.f, uv = 0.f;
  for (int w = i * f.kw; w < (i + 1) * f.kw; ++w) gv += part[w][0][r], uv += part[w][1][r];
  if (e >= 0 && e < a.E) static_cast<T*>(a.h)[p * a.gate.N + row] = silu_mul<T>(gv, uv);
}

// y = sum_k w * round16(pair's down) in top-k order for the CTA's down units, one thread a row
template <typename T, int W>
__device__ __forceinline__ void store_y(const MoeArgs& a, const FusedGrid& f, const float (&part)[W][16]) {
  if (threadIdx.x >= f.Ud * 16) return;
  const int i = threadIdx.x / 16, r = threadIdx.x % 16, v = blockIdx.x + i * f.nb;
  const int row = v % f.tiles_d * 16 + r;
  if (v >= f.n_d || row >= a.down.N) return;
  const long long t = v / f.tiles_d;
  float acc = 0.f;
  for (int j = 0; j < f.k; ++j) {
    const int w0 = (i * f.k + j) * f.kwd;
    float sum = 0.f;
    for (int w = w0; w < w0 + f.kwd; ++w) sum += part[w][r];
    const long long p = t * f.k + j;
    const float wt = a.wts32 ? static_cast<const float*>(a.wts)[p] : Half16<T>::to_f(static_cast<const T*>(a.wts)[p]);
    acc = fmaf(round16<T>(sum), wt, acc);
  }
  static_cast<T*>(a.y)[t * a.down.N + row] = Half16<T>::from_f(acc);
}

// W warps: 16 or 24 (at most 80 registers, 85 being 64 Ki / 768 threads: 1.5x the warps to hide
// the MMAs' and loads' latency; Qwen3-30B-A3B at T = 1 then gives every warp 2 stages of gate|up
// and 2 of down where 16 warps take 4 and 3, with 4 and 0 warps idle; at 32 warps, 64 registers,
// ptxas spills)
template <typename T, int G, bool ASYM, int W>
__global__ void __launch_bounds__(W * 32, 1) moe_fused_kernel(const MoeArgs a) {
  constexpr int NG = kStageK / G;
  using GSlot = GuSlot<NG, ASYM>;
  using DSlot = DnSlot<NG, ASYM>;
  extern __shared__ uint4 smem[];
  __shared__ float part_gu[W][2][16];
  __shared__ float part_d[W][16];
  __shared__ Share down_of[W];  // each warp's down share, kept here across gate_up (registers)
  pdl_trigger();
  pdl_wait();  // x and the ids from here on
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const FusedGrid f(a);
  const Share gu = gate_up_share(a, f, warp);
  GSlot* gslots = reinterpret_cast<GSlot*>(smem) + gu.slot;
  DSlot* dslots0 = reinterpret_cast<DSlot*>(reinterpret_cast<GSlot*>(smem) + f.U * f.s_gu);
  {  // every copy at once: gate|up's stages first, one group each (its MMAs follow them in), then down's
    GateUpFeed<T, NG, ASYM> feed(a, gu.e, gu.row0, gu.lo, lane);
    for (int s = 0; s < gu.nst; ++s) {
      feed.issue(gslots[s], lane);
      cp_async_commit();
    }
    const Share dn = down_share(a, f, warp);
    DnFeed<T, NG, ASYM> dfeed(a.down, dn.e, dn.row0, dn.lo, lane);
    for (int s = 0; s < dn.nst; ++s) dfeed.issue(dslots0[dn.slot + s], lane);
    cp_async_commit();  // one group (maybe empty): the gate|up waits below count it
    if (lane == 0) down_of[warp] = dn;  // read after the __syncthreads below
  }
  float og[1][4] = {{0.f, 0.f, 0.f, 0.f}}, ou[1][4] = {{0.f, 0.f, 0.f, 0.f}};
  const uint4* xsrc[1] = {reinterpret_cast<const uint4*>(static_cast<const T*>(a.x) + gu.pair / f.k * a.stride_xm) +
                          gu.lo * (kStageK / 8) + 2 * c};
  const bool has[1] = {true};
  for (int s = 0; s < gu.nst; ++s) {
    uint4 xv[1][2][2];
    load_x<1, true>(xv, xsrc, has, s * (kStageK / 8));
    cp_async_wait_upto(gu.nst - s);  // this stage's group in; later stages' and down's may still fly
    __syncwarp();                     // lane l's chunks are read by the other lanes
    if constexpr ((kKnockout & kKoMath) == 0) {
      stage_qz<T, 1, NG, ASYM>(og, gslots[s].w[0], gslots[s].sz[0], xv, g, c);
      stage_qz<T, 1, NG, ASYM>(ou, gslots[s].w[1], gslots[s].sz[1], xv, g, c);
    }
  }
  if (c == 0) {  // token column 0 is thread c = 0's elements 0 (row g) and 2 (row g + 8)
    part_gu[warp][0][g] = og[0][0], part_gu[warp][0][g + 8] = og[0][2];
    part_gu[warp][1][g] = ou[0][0], part_gu[warp][1][g + 8] = ou[0][2];
  }
  __syncthreads();
  store_h<T>(a, f, part_gu);
  if constexpr ((kKnockout & kKoSync) == 0) grid_barrier(a.counters);

  float out[1][4] = {{0.f, 0.f, 0.f, 0.f}};
  const Share dn = down_of[warp];
  const DSlot* dslots = dslots0 + dn.slot;
  constexpr int kStep = kStageK / 8;  // uint4 of h a stage
  const uint4* hsrc = reinterpret_cast<const uint4*>(static_cast<const T*>(a.h) + dn.pair * a.down.K) +
                      dn.lo * kStep + 2 * c;
  // h one stage ahead of the MMAs (two register sets, unrolled by two: an index by s would put them
  // in local memory), so each L2 round trip after the barrier overlaps the stage before it; the
  // first two are both in flight before any MMA (Qwen3-30B-A3B: 2 or 3 stages a warp)
  uint4 ha[1][2][2], hb[1][2][2];
  if (dn.nst > 0) load_h(ha, hsrc);
  cp_async_wait<0>();
  __syncwarp();
  for (int s = 0; s < dn.nst; s += 2) {
    if (s + 1 < dn.nst) load_h(hb, hsrc + (s + 1) * kStep);
    if constexpr ((kKnockout & kKoMath) == 0) stage_qz<T, 1, NG, ASYM>(out, dslots[s].w, dslots[s].sz, ha, g, c);
    if (s + 1 < dn.nst) {
      if (s + 2 < dn.nst) load_h(ha, hsrc + (s + 2) * kStep);
      if constexpr ((kKnockout & kKoMath) == 0)
        stage_qz<T, 1, NG, ASYM>(out, dslots[s + 1].w, dslots[s + 1].sz, hb, g, c);
    }
  }
  if (c == 0) part_d[warp][g] = out[0][0], part_d[warp][g + 8] = out[0][2];
  __syncthreads();
  store_y<T>(a, f, part_d);
}

}  // namespace
