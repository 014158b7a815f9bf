// The decode by rows' stores (w4_rowsx.cuh, w8.cu's rows kernels): each warp's sums meet in shared
// memory, then the plain store, the GLU's (act(gate) * up) or the norm fold's halves. Anonymous
// namespace, as common.cuh: each .cu is its own shared library.
#pragma once
#include "common.cuh"

namespace {

// The decode by rows' store (w8.cu, w4_rowsx.cuh): each warp's fp32 sums of the CTA's 16 rows n0..
// (the MMA's C fragment: thread (g, c) holds rows g, g + 8 of tokens 8t + 2c, 8t + 2c + 1) go to its
// part(warp)[tok][row] in shared memory (its drained ring); after one barrier the first 16 M threads
// add the W warps' parts in warp order (the same bits run to run) and store y. Rows past N are padding.
template <int NTOK, typename Part>
__device__ __forceinline__ void stash_parts(int M, const float (&out)[NTOK][4], int warp, int g, int c, Part part) {
#pragma unroll
  for (int t = 0; t < NTOK; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int tok = 8 * t + 2 * c + (i & 1);
      if (tok < M) part(warp)[tok][g + 8 * (i >> 1)] = out[t][i];
    }
  __syncthreads();
  pdl_trigger();  // at the store, as the other decode kernels (pdl.py)
}
// The residual add and the next RMSNorm (Llama's style) folded into the decode by rows (fastpath's
// fold: no add_rmsnorm launch between two linears). A producer (o_proj, down: res set) stores, for
// each of its outputs y rounded to 16 bits as a stored y would be,
//   r_out = round(y + res), z = round(r_out * w) in y's place, and ss[tok * gridDim.x + cta] = the
//   fp32 sum of r_out^2 over the CTA's 16 rows (a shuffle tree in fixed order);
// a consumer (q|k|v, gate|up: ss_in set, x = z) scales each token's sums by
//   inv = 1 / sqrt(sum of its `parts` partials / K + eps) (one warp per token, fixed order)
// before its row scale, bias and activation. So it computes W (r * w) / rms(r): the norm's math
// with one rounding (z) where add_rmsnorm has two (x_hat, then x_hat * w). The consumer copies the
// partials to shared memory past its ring right after pdl_wait (fold_fetch), off its loop.
struct Fold {
  const void* res; const void* w; void* r_out; float* ss;  // producer
  const float* ss_in; float eps; int parts;                 // consumer: parts % 4 == 0
};
constexpr int kFoldSmem = 32 << 10;  // a consumer's partials at most: 512 parts (hidden 8192) x 16 tokens

// A fold the entry points accept: none; or a producer (every output, no GLU, not also a consumer,
// N % 16 == 0: fold_fetch copies whole 16-row chunks); or a consumer (its partials in 4s, within
// kFoldSmem); only for a kernel with the fold (`built`)
inline bool fold_ok(const Fold& f, int M, int N, int act, bool built) {
  const bool produce = f.res != nullptr, consume = f.ss_in != nullptr;
  const bool outs = f.w != nullptr && f.r_out != nullptr && f.ss != nullptr;
  const bool any_out = f.w != nullptr || f.r_out != nullptr || f.ss != nullptr;
  if (!produce && !consume) return !any_out;
  return built && produce == any_out && (!produce || (outs && act == 0 && !consume && N % 16 == 0)) &&
         (!consume || (f.parts >= 4 && f.parts % 4 == 0 && f.parts * M * 4 <= kFoldSmem));
}

// The consumer's partials, [M][parts] fp32, into shared memory. No cp.async group of their own: one
// more group would make every wait of the ring's loop (wait_group<STAGES - 2>) a stage stricter,
// shortening its lookahead for the whole loop. They join the loop's next group; the caller commits
// once more before its final cp_async_wait<0> (a warp with no stage commits nothing in its loop),
// and stash_parts' barrier shows them to every thread.
// A producer's residual rows (16 a token) and norm weights, [2 M + 2] 16-byte chunks, likewise:
// loaded in the store, they put a memory round trip at every CTA's end (run 20: the fold lost 35 us
// a step that way). Rows past N (a padding CTA) are not copied; the store reads none of them.
__device__ __forceinline__ void fold_fetch(const Fold& f, int M, int N, int n0, void* smem, int threads) {
  if (f.ss_in != nullptr) {
    for (int i = threadIdx.x; i < f.parts * M / 4; i += threads)
      cp_async16(static_cast<float4*>(smem) + i, reinterpret_cast<const float4*>(f.ss_in) + i);
  } else if (f.res != nullptr && n0 < N) {
    const char* res = static_cast<const char*>(f.res);
    const char* w = static_cast<const char*>(f.w);
    for (int i = threadIdx.x; i < 2 * M + 2; i += threads)
      cp_async16(static_cast<uint4*>(smem) + i, i < 2 * M ? res + ((long long)(i >> 1) * N + n0) * 2 + 16 * (i & 1)
                                                          : w + n0 * 2 + 16 * (i - 2 * M));
  }
}
// The shared memory a fold takes past the rings (fold_fetch's)
__device__ __host__ __forceinline__ int fold_smem(const Fold& f, int M) {
  return f.ss_in != nullptr ? f.parts * M * 4 : f.res != nullptr ? (2 * M + 2) * 16 : 0;
}

// inv[tok] of each token (fold_fetch's partials), or nullptr without a fold; after stash_parts
template <int W>
__device__ __forceinline__ const float* fold_inv(const Fold& f, int M, int K, const float* ss, int warp) {
  __shared__ float inv[16];
  if (f.ss_in == nullptr) return nullptr;
  const int lane = threadIdx.x & 31;
  for (int t = warp; t < M; t += W) {
    float v = 0.f;
    for (int p = lane; p < f.parts; p += 32) v += ss[t * f.parts + p];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) inv[t] = 1.f / sqrtf(v / static_cast<float>(K) + f.eps);
  }
  __syncthreads();
  return inv;
}

// The producer's store (f.res set): sum(tok, r) is the CTA's fp32 sum for row n0 + r of token tok;
// staged: fold_fetch's residual rows and weights
template <typename T, int W, typename Sum>
__device__ __forceinline__ void fold_store(const Out& o, const Fold& f, int n0, int warp, const T* staged, Sum sum) {
  using H = Half16<T>;
  const int lane = threadIdx.x & 31;
  for (int base = warp * 32; base < 16 * o.M; base += W * 32) {  // whole warps: the shuffles below
    const int idx = base + lane, r = idx & 15, tok = idx >> 4, row = n0 + r;
    float q = 0.f;
    if (idx < 16 * o.M && row < o.N) {
      float v = sum(tok, r);
      if (o.row_scale != nullptr) v *= o.row_scale[(long long)row * o.scale_stride];
      if (o.bias != nullptr) v += H::to_f(static_cast<const T*>(o.bias)[row]);
      const long long at = (long long)tok * o.N + row;
      const float rn = round16<T>(round16<T>(v) + H::to_f(staged[tok * 16 + r]));
      static_cast<T*>(f.r_out)[at] = H::from_f(rn);
      static_cast<T*>(o.y)[at] = H::from_f(rn * H::to_f(staged[o.M * 16 + r]));
      q = rn * rn;
    }
#pragma unroll
    for (int m = 8; m > 0; m >>= 1) q += __shfl_xor_sync(0xffffffffu, q, m);  // the token's 16 lanes
    if (idx < 16 * o.M && r == 0) f.ss[tok * gridDim.x + blockIdx.x] = q;
  }
}

template <typename T, int NTOK, int W, typename Part>
__device__ __forceinline__ void rows_store(const Out& o, const float (&out)[NTOK][4], int n0, int warp, int g, int c,
                                           Part part, const Fold& f = Fold{}, int K = 0, const void* staged = nullptr) {
  stash_parts<NTOK>(o.M, out, warp, g, c, part);
  auto sum = [&](int tok, int r) {
    float v = 0.f;
    for (int w = 0; w < W; ++w) v += part(w)[tok][r];
    return v;
  };
  if (f.res != nullptr) return fold_store<T, W>(o, f, n0, warp, static_cast<const T*>(staged), sum);
  const float* inv = fold_inv<W>(f, o.M, K, static_cast<const float*>(staged), warp);
  for (int idx = threadIdx.x; idx < 16 * o.M; idx += W * 32) {
    const int r = idx & 15, tok = idx >> 4, row = n0 + r;
    if (row >= o.N) continue;
    const float v = sum(tok, r);
    store_y<T>(o, row, tok, inv != nullptr ? v * inv[tok] : v);
  }
}

// The decode by rows' GLU store (a fused [gate; up] of 2 N rows, y [M, N]): the first W / 2 warps
// summed gate's 16 rows n0.., the others up's (n0 + N); each sum in warp order, scaled by its row's
// scale where the format has them (w8.cu), then h[tok, n0 + r] = act(gate) * up with a stored
// gate|up's roundings and act_mul's. No bias. A fold's consumer (f.ss_in) scales both sums first.
template <typename T, int NTOK, int W, typename Part>
__device__ __forceinline__ void glu_store(const Out& o, int act, const float (&out)[NTOK][4], int n0, int warp, int g,
                                          int c, Part part, const Fold& f = Fold{}, int K = 0,
                                          const void* staged = nullptr) {
  stash_parts<NTOK>(o.M, out, warp, g, c, part);
  const float* inv = fold_inv<W>(f, o.M, K, static_cast<const float*>(staged), warp);
  for (int idx = threadIdx.x; idx < 16 * o.M; idx += W * 32) {
    const int r = idx & 15, tok = idx >> 4;
    float gv = 0.f, uv = 0.f;
    for (int w = 0; w < W / 2; ++w) gv += part(w)[tok][r];
    for (int w = W / 2; w < W; ++w) uv += part(w)[tok][r];
    if (inv != nullptr) gv *= inv[tok], uv *= inv[tok];
    if (o.row_scale != nullptr) {
      gv *= o.row_scale[(long long)(n0 + r) * o.scale_stride];
      uv *= o.row_scale[(long long)(o.N + n0 + r) * o.scale_stride];
    }
    static_cast<T*>(o.y)[(long long)tok * o.N + n0 + r] = act_mul<T>(act, gv, uv);
  }
}

}  // namespace
