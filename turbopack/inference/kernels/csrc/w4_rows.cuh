// The dense W4A16 decode by rows (turbopack_w4_decode VARIANT 4 and 5; w4.cu includes it after v5's Args,
// device_attr, at_default_split and by_group, v7's launcher: its fallback).
// v5-v8 give a CTA 64 rows (4 warps of 16) and split K across CTAs: at decode shapes that split is
// what fills the SMs, and its partial sums go through the fp32 workspace, a counter and a last CTA
// (2.2-3.6 us of the 8B layers' 7.6-25 on the H100, knockouts, run 13). Here a CTA is 16 rows (VARIANT
// 4; 64 in 4 row tiles, VARIANT 5, below) and its W = 8 or 16 warps split K among themselves, the MoE's
// few-token down kernel (moe_token.cuh) on one linear and all M <= 8 tokens:
//   - each warp streams its K slice's weights and v7 scale/zero chunks through its own cp.async ring
//     (w4_feed.cuh DnFeed, DnSlot, ring_prologue), its first STAGES - 1 stages issued before pdl_wait;
//   - x's rows of the warp's slice are copied once into shared memory after the wait, and the sums of
//     x per group come from them (row_sums), not from all-ones MMAs;
//   - thread g of a quad row reads token g's fragments (the MMA's B column g; tokens past M read token
//     M - 1, a column never stored), so one MMA serves all M tokens: the weights are read once;
//   - the warps' sums meet in shared memory in warp order and the first R * 16 * M threads store y: no
//     workspace, counter or last CTA, and y is the same bits run to run.
// Measured as the MoE's down kernel on one expert at M = 1 (run 14, H100): 8-13% under the tuned v7 on
// all four 8B layers, the batch-1 step 2.589 -> 2.461 ms.
#pragma once
#include "common.cuh"
#include "w4_feed.cuh"  // Lin, DnSlot, DnFeed, ring_prologue, row_sums, ring_pass
#include "w4_stage.cuh"

#include <cstdint>

namespace {

constexpr int kRowsTokens = 8;  // one MMA token column

// R row tiles of 16 a CTA (VARIANT 4: R = 1; VARIANT 5: R = 4, 64 rows): warp w is row tile w / S and K
// slice w % S of S = W / R slices. The R warps of a slice share its staged x (each copies 1/R of it),
// so a CTA's x, the same M x K bytes from L2 at any R, serves R x 16 rows: at M = 8 and R = 1, x is
// twice the weights' bytes on the 8B layers (run 15).
// register cap: 64 (1024 threads per SM at W * 32 a CTA: two 16-warp or four 8-warp CTAs per SM)
template <typename T, int STAGES, int G, bool ASYM, int W, int R>
__global__ void __launch_bounds__(W * 32, 1024 / (W * 32)) w4_rows_kernel(const Args a) {
  constexpr int NG = kStageK / G, S = W / R;
  extern __shared__ uint4 smem[];
  __shared__ float part[W][kRowsTokens][16];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int rt = R == 1 ? 0 : warp / S, ks = R == 1 ? warp : warp % S;
  const int n0 = (blockIdx.x * R + rt) * 16;
  const bool active = R == 1 || n0 < a.NP;  // a row tile past the padded rows loads no weights (R > 1)
  const int stages = a.K / kStageK, per_w = (stages + S - 1) / S;
  const int w_lo = min(stages, ks * per_w), nst = min(stages, w_lo + per_w) - w_lo;
  DnSlot<NG, ASYM>* ring = reinterpret_cast<DnSlot<NG, ASYM>*>(smem) + warp * STAGES;
  float2* tables = reinterpret_cast<float2*>(reinterpret_cast<DnSlot<NG, ASYM>*>(smem) + W * STAGES);
  float2* xsum = tables + warp * per_w * NG * 4;
  const int tok_stride = per_w * 16;  // uint4 of one token's slice
  uint4* xs = reinterpret_cast<uint4*>(tables + W * per_w * NG * 4) + ks * a.M * tok_stride;
  const Lin L{a.qw, a.scales, a.zeros, a.o.N, a.NP, a.K, a.KT, a.KGP, a.TN};
  DnFeed<T, NG, ASYM> feed(L, 0, n0, w_lo, lane);
  auto issue = [&](int slot) { feed.issue(ring[slot], lane); };
  const int nw = active ? nst : 0;  // the warp's weight stages
  ring_prologue<STAGES>(nw, issue);
  pdl_wait();  // x from here on
  for (int t = 0; t < a.M; ++t) {
    const uint4* xrow = reinterpret_cast<const uint4*>(static_cast<const T*>(a.x) + (long long)t * a.stride_xm +
                                                       w_lo * kStageK);
    for (int i = rt * 32 + lane; i < nst * 16; i += R * 32) cp_async16(xs + t * tok_stride + i, xrow + i);
  }
  cp_async_commit();
  cp_async_wait<0>();  // x's slice (and the ring's first stages, copied before the wait)
  if constexpr (R == 1) __syncwarp(); else __syncthreads();  // R > 1: the slice's other warps copied parts
  row_sums<T, NG>(xsum, xs, nst, a.M, tok_stride, lane);
  __syncwarp();
  float out[1][4] = {{0.f, 0.f, 0.f, 0.f}};
  ring_pass<STAGES>(nw, xs + min(g, a.M - 1) * tok_stride, c, issue, [&](int j, int rd, const Xv& x) {
    float acc[2][1][4];
    weight_mma<T, 1>(acc, ring[rd].w, x.v, g, c);
    group_fma<T, 1, NG, ASYM>(out, acc, xsum + j * NG * 4, ring[rd].sz, g, c);
  });
  cp_async_wait<0>();
#pragma unroll
  for (int i = 0; i < 4; ++i) {  // thread (g, c) holds rows g, g + 8 of tokens 2c, 2c + 1
    const int tok = 2 * c + (i & 1);
    if (tok < a.M) part[warp][tok][g + 8 * (i >> 1)] = out[0][i];
  }
  __syncthreads();
  pdl_trigger();  // at the store, as the other decode kernels (pdl.py)
  for (int idx = threadIdx.x; idx < R * 16 * a.M; idx += W * 32) {  // (row tile, token, row) in that order
    const int r = idx & 15, tok = R == 1 ? idx >> 4 : (idx >> 4) % a.M, t_r = R == 1 ? 0 : idx / (16 * a.M);
    const int row = (blockIdx.x * R + t_r) * 16 + r;
    if (row >= a.o.N) continue;
    float v = 0.f;
    for (int k = 0; k < S; ++k) v += part[t_r * S + k][tok][r];
    store_y<T>(a.o, row, tok, v);
  }
}

// Shared memory of a launch: W warps' rings of STAGES slots (a 1 KiB Stage and its (3 asym, else 2) x
// NG scale/zero chunks), their sum tables and x's M rows of K (per K slice of S = W / R warps)
int rows_smem(int W, int R, int stages, int M, int K, int G, bool asym) {
  static_assert(sizeof(DnSlot<2, true>) == sizeof(Stage) + 6 * 16 && sizeof(DnSlot<1, false>) == sizeof(Stage) + 2 * 16,
                "DnSlot is a Stage and its chunks");
  const int ng = kStageK / G, S = W / R, per_w = (K / kStageK + S - 1) / S;
  return W * (stages * (static_cast<int>(sizeof(Stage)) + 16 * (asym ? 3 : 2) * ng) + per_w * ng * 4 * 8) +
         S * per_w * kStageK * 2 * M;
}

// VARIANT 4 and 5, the decode by rows (w4_rows.cuh): W warps a CTA of R row tiles, ring 4
template <typename T, int G, bool ASYM, int W, int R>
int launch_rows(const Args& a, cudaStream_t s) {  // smem within the device's opt-in (by_rows checks)
  void (*kern)(const Args) = w4_rows_kernel<T, 4, G, ASYM, W, R>;
  const int smem = rows_smem(W, R, 4, a.M, a.K, G, ASYM);
  // the cap follows the largest launch yet (one attribute call each time it grows), from the first launch
  // on: the default 48 KiB is less this kernel's static part sums (4-8 KiB; run 14's launch error at 47 KiB)
  static int raised = 0;
  if (smem > raised) {
    const cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return static_cast<int>(e);
    raised = smem;
  }
  return static_cast<int>(launch_kernel(kern, dim3((a.NP / 16 + R - 1) / R), dim3(W * 32), smem, s, a));
}

template <typename T, int R>
int rows_by_group(const Args& a, cudaStream_t s) {
  const bool asym = a.zeros != nullptr, w16 = a.split_k == 16;
  if (a.G == 128) {
    if (asym) return w16 ? launch_rows<T, 128, true, 16, R>(a, s) : launch_rows<T, 128, true, 8, R>(a, s);
    return w16 ? launch_rows<T, 128, false, 16, R>(a, s) : launch_rows<T, 128, false, 8, R>(a, s);
  }
  if (asym) return w16 ? launch_rows<T, 64, true, 16, R>(a, s) : launch_rows<T, 64, true, 8, R>(a, s);
  return w16 ? launch_rows<T, 64, false, 16, R>(a, s) : launch_rows<T, 64, false, 8, R>(a, s);
}

// The rows kernels copy 16-byte scale and zero chunks into their rings (DnFeed, as v7)
bool chunks_aligned(const Args& a) {
  return reinterpret_cast<uintptr_t>(a.scales) % 16 == 0 && reinterpret_cast<uintptr_t>(a.zeros) % 16 == 0;
}

// Where a rows kernel cannot run: v7 at the default split, ring 4
template <typename T>
int v7_fallback(const Args& a, cudaStream_t s) {
  const int sms = sm_count();
  if (sms <= 0) return -4;
  const Args b = at_default_split(a, sms);
  return a.M <= 8 ? by_group<T, 1>(b, 4, 2, false, s) : by_group<T, 2>(b, 4, 2, false, s);
}

// VARIANT 4 (16 rows a CTA) and 5 (64 rows: 4 row tiles), the decode by rows: split_k is its warps per
// CTA (8 or 16), ring 4. Where it cannot run (M > 8: one token column; scales or zeros not 16-byte
// aligned: v7's chunk copies; x's rows past the device's shared memory), v7 at the default split, as
// v8's fallback.
template <typename T>
int by_rows(const Args& a, int stages, int variant, cudaStream_t s) {
  if (stages != 4) return -2;
  if (a.split_k != 8 && a.split_k != 16) return -1;
  const int R = variant == 5 ? 4 : 1;
  if (a.M > kRowsTokens || !chunks_aligned(a) ||
      rows_smem(a.split_k, R, 4, a.M, a.K, a.G, a.zeros != nullptr) > device_attr<cudaDevAttrMaxSharedMemoryPerBlockOptin>())
    return v7_fallback<T>(a, s);
  return R == 4 ? rows_by_group<T, 4>(a, s) : rows_by_group<T, 1>(a, s);
}

}  // namespace
