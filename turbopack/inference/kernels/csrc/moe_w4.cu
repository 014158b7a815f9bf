// Grouped W4A16 mixture-of-experts decode: every selected expert of a step in one launch per
// matmul, on the dense decode's stage loop (w4_stage.cuh; docs/kernels.md "Grouped MoE decode").
//   turbopack_moe_w4   gate|up (h = silu(g) * u) then down (routing weight, sum over top-k)
//
// At a few tokens (T <= 2) the default is moe_token.cuh's pair instead: gate_up by pair and down by
// token, without the routing, the workspace or the counters below. The routed kernels:
// experts are stacked [E, ...] in the w4_t{16,64}x64 layouts (expert e = slice e, the layout's own
// bytes). Grid of each kernel: (64-row tile, K split, block slot). A block is up to BM = 8 * NTOK
// token rows of one expert; slot b is the b-th block of the routing (experts in id order, an
// expert's pairs in pair order, cut into runs of BM), computed by every CTA from the top-k ids
// (route_block, moe_route.cuh: a shared histogram, a warp scan, a ballot pass; ~2 KiB of ids from L2 at T = 64)
// instead of a separate align launch: at T = 1 a launch is a third of the layer's time. Slots past
// the routing's block count exit at once; the grid is the bound for any routing,
// min(T*k, min(E, T*k) + T*k / BM) slots.
//
// gate_up: each warp streams 16 rows of gate AND the same 16 rows of up through one cp.async ring
// (a ring slot = 128 k of both, 2 KiB, plus their scale/zero chunks as v7 copies them), so the
// activation fragments and the sum-of-x MMAs serve both matrices, and h = silu(g) * u is formed in
// the registers of the warp that owns both rows (no exchange). Roundings as the loop of dense
// linears: g and u to 16 bits, silu(g) to 16 bits, the product to 16 bits. h is written by pair
// [T*k, I]. Split-K (blockIdx.y) goes through the shared fp32 workspace and a counter per (slot,
// tile) as store_tile_at does; the last CTA forms h.
// down: v7's loop for one matrix (h rows gathered by pair). Each CTA writes its fp32 sums (split-K
// partials added) to the workspace at [pair, hidden] and counts one arrival per token of its block
// on (token, tile); the CTA that completes a token's k * split arrivals reads the k rows in top-k
// order, rounds each to 16 bits, multiplies by its routing weight, sums in fp32 in that fixed order
// (deterministic), writes y [T, hidden] and re-zeroes the workspace rows and the counter. No CTA
// waits for another.
// The sums of x per group: v6's per-CTA table (sum_x; the 4 warps of a CTA share its tokens and K
// range), computed while the ring's first stages load: 16 MMAs per gate|up slot instead of 24, 8
// per down stage instead of 16. The first build summed x with all-ones MMAs in the loop (v5's way):
// 290 SASS instructions per gate|up slot at one token column, group 128, asym; the table: 262 (down:
// 176 -> 157 per stage). XQ (MoECudaConfig.x_per_stage) needs no sums: the zero points leave in
// the MMA's operands (stage_qz, the dense rows with x per stage's), so no CTA reads its block's x
// (h) twice, once for the table before its loop and again per stage (ncu at T = 64, H100, run 24:
// the routed gate_up's warps stall 6.6 cycles per issued instruction on long scoreboard).
#include "common.cuh"
#include "moe_token.cuh"  // the few-token kernels: moe_gate_up_pair_kernel, moe_down_token_kernel
#include "moe_route.cuh"  // Lin, MoeArgs, Route, route_block
#include "moe_stage.cuh"  // GuSlot, DnSlot, Feed, x_sources, round16, silu_mul
#include "w4_stage.cuh"  // the stage, weight_mma, sum_x, group_fma

namespace {

template <typename T, int NTOK, int STAGES, int G, bool ASYM, bool XQ>
__global__ void __launch_bounds__(kWarps * 32) moe_gate_up_kernel(const MoeArgs a) {
  constexpr int NG = kStageK / G;
  extern __shared__ uint4 smem[];
  __shared__ Route r;
  pdl_trigger();  // the down grid may start streaming its weights once every gate_up CTA runs
  if (!route_block<8 * NTOK>(a, blockIdx.z, r, reinterpret_cast<int*>(smem))) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  GuSlot<NG, ASYM>* ring = reinterpret_cast<GuSlot<NG, ASYM>*>(smem) + warp * STAGES;
  float2* xsum = reinterpret_cast<float2*>(reinterpret_cast<GuSlot<NG, ASYM>*>(smem) + kWarps * STAGES);
  const Lin& L = a.gate;
  const int n0 = blockIdx.x * (kWarps * 16) + warp * 16;
  const bool active = n0 < L.NP;
  const int stages = L.K / kStageK, per = (stages + a.split - 1) / a.split;
  const int s_lo = min(stages, (int)blockIdx.y * per), s_cta = min(stages, s_lo + per);  // every warp sums x over it
  const int s_hi = active ? s_cta : s_lo;
  GateUpFeed<T, NG, ASYM> feed(a, r.e, n0, s_lo, lane);
  auto issue = [&](int slot) { feed.issue(ring[slot], lane); };
  const uint4* xsrc[NTOK];
  bool has[NTOK];
  x_sources<T, NTOK>(xsrc, has, a.x, a.stride_xm, r, a.topk, s_lo, g, c);
  ring_prologue<STAGES>(s_hi - s_lo, issue);
  if constexpr (!XQ) {
    sum_x<T, NTOK, NG>(xsum, xsrc, has, s_cta - s_lo, 0, s_cta - s_lo, warp, g, c);  // while the ring loads
    __syncthreads();  // every warp reads every warp's sums
  }
  float og[NTOK][4], ou[NTOK][4];
#pragma unroll
  for (int t = 0; t < NTOK; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) og[t][i] = ou[t][i] = 0.f;
  int rd = 0, wr = STAGES - 1;
  for (int j = 0; s_lo + j < s_hi; ++j) {
    uint4 xv[NTOK][2][2];
    load_x<NTOK>(xv, xsrc, has, j * (kStageK / 8));
    cp_async_wait<STAGES - 2>();
    __syncwarp();  // lane l's chunks are read by other lanes; slot wr is free
    if (s_lo + j + STAGES - 1 < s_hi) issue(wr);
    cp_async_commit();
    wr = wr + 1 == STAGES ? 0 : wr + 1;
    if constexpr ((kKnockout & kKoMath) != 0) {
      rd = rd + 1 == STAGES ? 0 : rd + 1;
      continue;
    }
    if constexpr (XQ) {
      stage_qz<T, NTOK, NG, ASYM>(og, ring[rd].w[0], ring[rd].sz[0], xv, g, c);
      stage_qz<T, NTOK, NG, ASYM>(ou, ring[rd].w[1], ring[rd].sz[1], xv, g, c);
    } else {
      float acc[2][NTOK][4];
      const float2* xrow = xsum + j * NG * NTOK * 4;
      weight_mma<T, NTOK>(acc, ring[rd].w[0], xv, g, c);
      group_fma<T, NTOK, NG, ASYM>(og, acc, xrow, ring[rd].sz[0], g, c);
      weight_mma<T, NTOK>(acc, ring[rd].w[1], xv, g, c);
      group_fma<T, NTOK, NG, ASYM>(ou, acc, xrow, ring[rd].sz[1], g, c);
    }
    rd = rd + 1 == STAGES ? 0 : rd + 1;
  }
  cp_async_wait<0>();
  // out element i of column t: row n0 + g + 8 (i / 2), block row 8t + 2c + (i & 1)
  T* h = static_cast<T*>(a.h);
  const int N = L.N;
  const bool split = a.split > 1 && (kKnockout & kKoStore) == 0;
  if (split) {
#pragma unroll
    for (int t = 0; t < NTOK; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = n0 + g + 8 * (i >> 1), slot = 8 * t + 2 * c + (i & 1);
        if (active && row < N && slot < r.rows) {
          float* w = a.ws + (long long)r.pair[slot] * 2 * N + row;
          atomicAdd(w, og[t][i]);
          atomicAdd(w + N, ou[t][i]);
        }
      }
    __threadfence();
    __syncthreads();
    __shared__ int last;
    const int tile = blockIdx.z * gridDim.x + blockIdx.x;
    if (threadIdx.x == 0) last = atomicAdd(a.counters + tile, 1) == a.split - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    if (threadIdx.x == 0) a.counters[tile] = 0;
  }
#pragma unroll
  for (int t = 0; t < NTOK; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = n0 + g + 8 * (i >> 1), slot = 8 * t + 2 * c + (i & 1);
      if (active && row < N && slot < r.rows) {
        const long long p = r.pair[slot];
        float gv = og[t][i], uv = ou[t][i];
        if (split) {  // read the sums at L2 and leave the workspace zeroed
          gv = atomicExch(a.ws + p * 2 * N + row, 0.f);
          uv = atomicExch(a.ws + p * 2 * N + N + row, 0.f);
        }
        h[p * N + row] = silu_mul<T>(gv, uv);
      }
    }
}

// down's cap on sm_90: 4 CTAs (128 registers); without it ptxas spilled the feed pointers in the
// loop at 55 registers (one token column, group 64, sym). Other arches keep their own allocation
// (sm_80 spills under this cap), as w4.cu's caps do.
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 900 || __CUDA_ARCH__ >= 1000)
#define TP_MOE_DOWN_MIN_BLOCKS 1
#else
#define TP_MOE_DOWN_MIN_BLOCKS 4
#endif
template <typename T, int NTOK, int STAGES, int G, bool ASYM, bool XQ>
__global__ void __launch_bounds__(kWarps * 32, TP_MOE_DOWN_MIN_BLOCKS) moe_down_kernel(const MoeArgs a) {
  constexpr int NG = kStageK / G;
  extern __shared__ uint4 smem[];
  __shared__ Route r;
  __shared__ int last[16];
  if (!route_block<8 * NTOK>(a, blockIdx.z, r, reinterpret_cast<int*>(smem))) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  DnSlot<NG, ASYM>* ring = reinterpret_cast<DnSlot<NG, ASYM>*>(smem) + warp * STAGES;
  float2* xsum = reinterpret_cast<float2*>(reinterpret_cast<DnSlot<NG, ASYM>*>(smem) + kWarps * STAGES);
  const Lin& L = a.down;
  const int n0 = blockIdx.x * (kWarps * 16) + warp * 16;
  const bool active = n0 < L.NP;
  const int stages = L.K / kStageK, per = (stages + a.split - 1) / a.split;
  const int s_lo = min(stages, (int)blockIdx.y * per), s_cta = min(stages, s_lo + per);
  const int s_hi = active ? s_cta : s_lo;
  DnFeed<T, NG, ASYM> feed(L, r.e, n0, s_lo, lane);
  const uint4* xsrc[NTOK];
  bool has[NTOK];
  x_sources<T, NTOK>(xsrc, has, a.h, L.K, r, 1, s_lo, g, c);  // h rows by pair
  ring_prologue<STAGES>(s_hi - s_lo, [&](int slot) { feed.issue(ring[slot], lane); });
  pdl_wait();  // h (and the workspace gate_up leaves zeroed) from here on
  if constexpr (!XQ) {
    sum_x<T, NTOK, NG>(xsum, xsrc, has, s_cta - s_lo, 0, s_cta - s_lo, warp, g, c);
    __syncthreads();
  }
  float out[NTOK][4];
#pragma unroll
  for (int t = 0; t < NTOK; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) out[t][i] = 0.f;
  int rd = 0, wr = STAGES - 1;
  for (int j = 0; s_lo + j < s_hi; ++j) {
    uint4 xv[NTOK][2][2];
    load_x<NTOK>(xv, xsrc, has, j * (kStageK / 8));
    cp_async_wait<STAGES - 2>();
    __syncwarp();
    if (s_lo + j + STAGES - 1 < s_hi) feed.issue(ring[wr], lane);
    cp_async_commit();
    wr = wr + 1 == STAGES ? 0 : wr + 1;
    if constexpr ((kKnockout & kKoMath) != 0) {
      rd = rd + 1 == STAGES ? 0 : rd + 1;
      continue;
    }
    if constexpr (XQ) {
      stage_qz<T, NTOK, NG, ASYM>(out, ring[rd].w, ring[rd].sz, xv, g, c);
    } else {
      float acc[2][NTOK][4];
      weight_mma<T, NTOK>(acc, ring[rd].w, xv, g, c);
      group_fma<T, NTOK, NG, ASYM>(out, acc, xsum + j * NG * NTOK * 4, ring[rd].sz, g, c);
    }
    rd = rd + 1 == STAGES ? 0 : rd + 1;
  }
  cp_async_wait<0>();
  const int N = L.N;
  if (a.combine) {  // round16(down) by pair: moe_combine_kernel sums them after this grid (no fence or counter)
    T* v = reinterpret_cast<T*>(a.ws);
#pragma unroll
    for (int t = 0; t < NTOK; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = n0 + g + 8 * (i >> 1), slot = 8 * t + 2 * c + (i & 1);
        if (active && row < N && slot < r.rows) v[(long long)r.pair[slot] * N + row] = Half16<T>::from_f(out[t][i]);
      }
    return;
  }
  if constexpr ((kKnockout & kKoStore) != 0) {  // each CTA's partial as its token's y: no sum over k
#pragma unroll
    for (int t = 0; t < NTOK; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = n0 + g + 8 * (i >> 1), slot = 8 * t + 2 * c + (i & 1);
        if (active && row < N && slot < r.rows)
          static_cast<T*>(a.y)[(long long)(r.pair[slot] / a.topk) * N + row] = Half16<T>::from_f(out[t][i]);
      }
    return;
  }
#pragma unroll
  for (int t = 0; t < NTOK; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = n0 + g + 8 * (i >> 1), slot = 8 * t + 2 * c + (i & 1);
      if (active && row < N && slot < r.rows) {
        float* w = a.ws + (long long)r.pair[slot] * N + row;
        if (a.split > 1) atomicAdd(w, out[t][i]);
        else *w = out[t][i];
      }
    }
  __threadfence();
  __syncthreads();
  const int tiles = gridDim.x, arrivals = a.topk * a.split;
  if (threadIdx.x < r.rows) {
    const int tok = r.pair[threadIdx.x] / a.topk;
    last[threadIdx.x] = atomicAdd(a.counters + tok * tiles + blockIdx.x, 1) == arrivals - 1;
  }
  __syncthreads();
  const int row = blockIdx.x * (kWarps * 16) + threadIdx.x;
  T* y = static_cast<T*>(a.y);
  for (int s = 0; s < r.rows; ++s) {  // tokens whose k * split sums are all in: y, in top-k order
    if (!last[s]) continue;
    __threadfence();
    const int tok = r.pair[s] / a.topk;
    if (threadIdx.x < kWarps * 16 && row < N) {
      float acc = 0.f;
      for (int j = 0; j < a.topk; ++j) {
        const long long p = (long long)tok * a.topk + j;
        const float v = round16<T>(__ldcg(a.ws + p * N + row));
        a.ws[p * N + row] = 0.f;
        const float wt = a.wts32 ? static_cast<const float*>(a.wts)[p] : Half16<T>::to_f(static_cast<const T*>(a.wts)[p]);
        acc = fmaf(v, wt, acc);
      }
      y[(long long)tok * N + row] = Half16<T>::from_f(acc);
    }
    if (threadIdx.x == 0) a.counters[tok * tiles + blockIdx.x] = 0;
  }
}

// y = sum_k w * v in top-k order, v the routed down's 16-bit results by pair (a.combine: ws as T
// [T*k, hidden]), which it reads once and re-zeroes: the routed down's sums without its per-CTA
// fence, counters and last CTA, for one more (dependent) launch. The same bits as that store (its
// round16 is this v). A pair whose id is out of range adds nothing. Grid (hidden / 256, T).
template <typename T>
__global__ void __launch_bounds__(256) moe_combine_kernel(const MoeArgs a) {
  pdl_wait();  // down's v from here on
  const int N = a.down.N, row = blockIdx.x * 256 + threadIdx.x, tok = blockIdx.y;
  if (row >= N) return;
  T* v = reinterpret_cast<T*>(a.ws);
  float acc = 0.f;
  for (int j = 0; j < a.topk; ++j) {
    const long long p = (long long)tok * a.topk + j;
    const int e = expert_of(a, p);
    if (e < 0 || e >= a.E) continue;
    const float wt = a.wts32 ? static_cast<const float*>(a.wts)[p] : Half16<T>::to_f(static_cast<const T*>(a.wts)[p]);
    acc = fmaf(Half16<T>::to_f(v[p * N + row]), wt, acc);
    v[p * N + row] = Half16<T>::from_f(0.f);
  }
  static_cast<T*>(a.y)[(long long)tok * N + row] = Half16<T>::from_f(acc);
}

template <typename Slot>
constexpr int ring_bytes(int stages) { return kWarps * stages * static_cast<int>(sizeof(Slot)); }

// the sum-of-x table behind a routed kernel's ring (none with x per stage): a float2 per (stage of
// the CTA's K slice, group, token column, quad lane)
template <int NG, int NTOK>
int xsum_table_bytes(int K, int split) { return ((K / kStageK + split - 1) / split) * NG * NTOK * 4 * 8; }

// One launch (common.cuh launch_with); sets the kernel's dynamic shared memory cap at its first
// launch and whenever a launch needs more (a static per kernel: not a per-launch driver call). Not
// left at the default 48 KiB: that default is less the kernel's static shared memory (the few-token
// kernels' part sums), so a launch just under 48 KiB failed (cudaErrorInvalidValue, run 14)
template <void (*Kern)(const MoeArgs)>
int launch(dim3 grid, int smem, const MoeArgs& a, Launch how, cudaStream_t s, int warps = kWarps) {
  static int raised = 0;
  if (smem > raised) {
    cudaError_t e = cudaFuncSetAttribute(Kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return static_cast<int>(e);
    raised = smem;
  }
  return static_cast<int>(launch_with(Kern, grid, dim3(warps * 32), smem, s, how, a));
}

// The step's knobs past the template arguments (cuda_moe.MoECudaConfig's)
struct Knobs {
  int split_gu, split_d, stages_gu, stages_d, down_warps;
  bool gate_up_by_pair, down_by_token, pdl, pdl_gu, x_per_stage, combine;
};

// down after gate_up: by token (moe_token.cuh) or by routed block with split K
template <typename T, int NTOK, int G, bool ASYM, int STAGES_D>
int down(MoeArgs a, int blocks, const Knobs& k, cudaStream_t s) {
  constexpr int NG = kStageK / G;
  const Launch dep{k.pdl && g_pdl != 0, 1};
  if (k.down_by_token) {
    const int w = k.down_warps, ks = w / a.topk, per_w = (a.down.K / kStageK + ks - 1) / ks;
    const dim3 grid((a.down.NP + 15) / 16, a.T);
    if (k.x_per_stage)  // the ring alone; built in 16 warps (the default's)
      return launch<moe_down_token_kernel<T, STAGES_D, G, ASYM, 16, true>>(
          grid, token_smem<TokSlot<DnSlot<NG, ASYM>>>(16, STAGES_D, 0, 0, NG), a, dep, s, 16);
    const int smem = token_smem<TokSlot<DnSlot<NG, ASYM>>>(w, STAGES_D, w * per_w * kStageK * 2, per_w, NG);
    if (w == 32) return launch<moe_down_token_kernel<T, STAGES_D, G, ASYM, 32>>(grid, smem, a, dep, s, 32);
    if (w == 16) return launch<moe_down_token_kernel<T, STAGES_D, G, ASYM, 16>>(grid, smem, a, dep, s, 16);
    return launch<moe_down_token_kernel<T, STAGES_D, G, ASYM, 8>>(grid, smem, a, dep, s, 8);
  }
  a.split = k.split_d;
  a.combine = k.combine;
  const int scratch = (a.E + a.T * a.topk) * 4;
  const dim3 grid((a.down.NP + 63) / 64, k.split_d, blocks);
  const int smem = max(scratch, ring_bytes<DnSlot<NG, ASYM>>(STAGES_D) +
                                    (k.x_per_stage ? 0 : xsum_table_bytes<NG, NTOK>(a.down.K, k.split_d)));
  const int rc = k.x_per_stage ? launch<moe_down_kernel<T, NTOK, STAGES_D, G, ASYM, true>>(grid, smem, a, dep, s)
                               : launch<moe_down_kernel<T, NTOK, STAGES_D, G, ASYM, false>>(grid, smem, a, dep, s);
  if (rc != 0 || !k.combine) return rc;
  return launch<moe_combine_kernel<T>>(dim3((a.down.N + 255) / 256, a.T), 0, a, dep, s, 8);
}

// gate_up by pair (moe_token.cuh) or by routed block with split K
template <typename T, int NTOK, int STAGES, int G, bool ASYM>
int gate_up(MoeArgs a, int blocks, const Knobs& k, cudaStream_t s) {
  constexpr int NG = kStageK / G;
  if (k.gate_up_by_pair) {  // a PDL secondary where pdl_gu: it waits before reading x and the ids
    const int per_w = (a.gate.K / kStageK + kTokWarps - 1) / kTokWarps;
    const int smem = token_smem<TokSlot<GuSlot<NG, ASYM>>>(kTokWarps, STAGES, a.gate.K * 2, per_w, NG);
    return launch<moe_gate_up_pair_kernel<T, STAGES, G, ASYM>>(dim3((a.gate.NP + 15) / 16, 1, a.T * a.topk), smem, a,
                                                                Launch{k.pdl_gu && g_pdl != 0, 1}, s, kTokWarps);
  }
  a.split = k.split_gu;
  const int scratch = (a.E + a.T * a.topk) * 4;
  const dim3 grid((a.gate.NP + 63) / 64, k.split_gu, blocks);
  const int smem = max(scratch, ring_bytes<GuSlot<NG, ASYM>>(STAGES) +
                                    (k.x_per_stage ? 0 : xsum_table_bytes<NG, NTOK>(a.gate.K, k.split_gu)));
  // the routed gate_up has no pdl_wait: never a dependent launch (it reads the router's ids at once)
  const Launch plain{false, 1};
  return k.x_per_stage ? launch<moe_gate_up_kernel<T, NTOK, STAGES, G, ASYM, true>>(grid, smem, a, plain, s)
                       : launch<moe_gate_up_kernel<T, NTOK, STAGES, G, ASYM, false>>(grid, smem, a, plain, s);
}

// Programmatic dependent launch (sm_90; common.cuh's pdl_wait / pdl_trigger): gate_up lets the down
// grid launch once all its CTAs run; down streams its first ring stages (weights and scales only)
// and then waits for gate_up's h. The config's switch and the library's (TURBOPACK_PDL) must both
// be on.
template <typename T, int NTOK, int G, bool ASYM>
int run(const MoeArgs& a, const Knobs& k, cudaStream_t s) {
  const int n = a.T * a.topk, blocks = min(n, min(a.E, n) + n / (8 * NTOK));
  const int rc = k.stages_gu == 6 ? gate_up<T, NTOK, 6, G, ASYM>(a, blocks, k, s) : gate_up<T, NTOK, 4, G, ASYM>(a, blocks, k, s);
  if (rc != 0) return rc;
  return k.stages_d == 8 ? down<T, NTOK, G, ASYM, 8>(a, blocks, k, s) : down<T, NTOK, G, ASYM, 4>(a, blocks, k, s);
}

template <typename T>
int by_shape(const MoeArgs& a, int G, int bm, const Knobs& k, cudaStream_t s) {
  const bool asym = a.gate.z != nullptr;
  if (bm == 8) {
    if (G == 128) return asym ? run<T, 1, 128, true>(a, k, s) : run<T, 1, 128, false>(a, k, s);
    return asym ? run<T, 1, 64, true>(a, k, s) : run<T, 1, 64, false>(a, k, s);
  }
  if (G == 128) return asym ? run<T, 2, 128, true>(a, k, s) : run<T, 2, 128, false>(a, k, s);
  return asym ? run<T, 2, 64, true>(a, k, s) : run<T, 2, 64, false>(a, k, s);
}

}  // namespace

// One MoE step: h = silu(gate(x)) * up(x) per selected pair, then y = sum_k w * down(h).
// x [T, hidden] (row stride stride_xm), ids [T*k] (int64 if ids64 else int32), wts [T*k] (fp32 if
// wts32 else the activations' dtype), q*/s*/z* the stacked packed tensors (z* null: sym), h [T*k,
// inter] scratch, y [T, hidden], ws/counters zeroed (left zeroed) of at least T*k*max(2*inter,
// hidden) floats and max(blocks * ceil(inter/64), T * ceil(hidden/64)) ints. dims: {N, NP, K, KT,
// KGP, TN} of gate/up and of down. bm: token rows per block, 8 or 16 (one or two MMA token
// columns; an expert with more tokens takes several blocks, each reading its weights). Ring slots:
// stages_gu 4 or 6 (gate|up, 2 KiB a warp each), stages_d 4 or 8 (1 KiB). gu_by_pair: gate_up as a
// CTA per (16 rows, pair) (split_gu unused); down_by_token: down per (16 rows, token) in down_warps
// = 8, 16 or 32 warps, which k divides (split_d unused); both need no ws or counters. pdl: down launched
// as a programmatic dependent of gate_up (sm_90+); pdl_gu: gate_up by pair as one of the kernel
// before it. x_per_stage: down by token (in 16 warps) and the routed gate_up and down read x (h) per
// stage and remove the zero points in the MMA's operands (stage_qz), staging and summing nothing;
// gate_up by pair ignores it. combine: the routed down (split_d 1) stores its 16-bit results by pair
// and moe_combine_kernel, a third launch (dependent where pdl), sums them over top-k. Returns 0, -1
// bad arguments, or the CUDA error.
extern "C" int turbopack_moe_w4(const void* x, const void* ids, const void* wts, const void* qg, const void* sg,
                                const void* zg, const void* qu, const void* su, const void* zu, const void* qd,
                                const void* sd, const void* zd, void* h, void* y, void* ws, void* counters,
                                const int* gu_dims, const int* d_dims, int T, int topk, int E, int G, int stride_xm,
                                int ids64, int wts32, int bm, int split_gu, int split_d, int stages_gu,
                                int stages_d, int gu_by_pair, int down_by_token, int down_warps, int pdl, int pdl_gu,
                                int x_per_stage, int combine, int dtype, void* stream) {
  const int n = T * topk;
  if (T < 1 || topk < 1 || n > kMaxPairs || E < 1 || E > kMaxExperts || (G != 64 && G != 128) || stride_xm % 8 != 0 ||
      (bm != 8 && bm != 16) || split_gu < 1 || split_d < 1 || (stages_gu != 4 && stages_gu != 6) ||
      (stages_d != 4 && stages_d != 8) ||
      (down_by_token && ((down_warps != 8 && down_warps != 16 && down_warps != 32) || topk > down_warps ||
                         down_warps % topk != 0 || down_warps * stages_d > kMaxDownSlots)) ||
      (x_per_stage && down_by_token && down_warps != 16) || (combine && (down_by_token || split_d != 1)) ||
      (dtype != 0 && dtype != 1) || (zg == nullptr) != (zd == nullptr) || (zg == nullptr) != (zu == nullptr))
    return -1;
  auto lin = [](const void* q, const void* s, const void* z, const int* d) {
    return Lin{static_cast<const uint4*>(q), s, static_cast<const uint8_t*>(z), d[0], d[1], d[2], d[3], d[4], d[5]};
  };
  MoeArgs a{x, ids, wts, lin(qg, sg, zg, gu_dims), lin(qu, su, zu, gu_dims), lin(qd, sd, zd, d_dims),
            h, y, static_cast<float*>(ws), static_cast<int*>(counters), T, topk, E, stride_xm, ids64, wts32, 1, 0};
  if (a.gate.K % kStageK != 0 || a.down.K % kStageK != 0 || a.gate.TN % 16 != 0 || a.down.TN % 16 != 0 ||
      a.down.K != a.gate.N)
    return -1;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const Knobs k{split_gu, split_d, stages_gu, stages_d, down_warps, gu_by_pair != 0, down_by_token != 0, pdl != 0,
                pdl_gu != 0, x_per_stage != 0, combine != 0};
  return dtype == 0 ? by_shape<__nv_bfloat16>(a, G, bm, k, s) : by_shape<__half>(a, G, bm, k, s);
}

