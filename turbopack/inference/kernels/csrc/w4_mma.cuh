// Shared by the W4 multi-column kernels (w4_mma.cu: mma.sync; w4_wgmma.cu: wgmma, sm_90a): their
// arguments, the copies of one 128-k stage's weights, scales and zero points into a ring slot, the
// decode of a 16-row weight fragment into mma A registers, and the split-K-by-slices store.
#pragma once
#include "common.cuh"

namespace {

constexpr int kStageK = 128;
constexpr int kSzChunks = 6;  // per 16-row fragment and stage: scales of two 64-k tiles (2 x 2), zero points (2)

struct MmaArgs {
  Out o;
  const void* x; const uint4* qw; const void* scales; const uint8_t* zeros;
  int M, NP, K, KT, KGP, TN, G, stride_xm, split_k, stages;
};

// The arguments of both W4 multi-column entry points (w4_mma.cu, w4_wgmma.cu), with the checks they
// share: M >= 1, K in whole 128-k stages, group 64 or 128, 16-row layout tiles, x rows 16-byte
// aligned, a split, a ring of 3 to most_stages stages (5: the cp.async rings' wait_ring; the
// mbarrier rings check their shared memory instead), bf16 or fp16. false: the caller returns -1.
inline bool mma_args(MmaArgs& a, const void* x, const void* qw, const void* scales, const void* zeros,
                     const void* bias, void* y, void* ws, void* counters, int M, int N, int NP, int K, int KT, int KGP,
                     int TN, int G, int stride_xm, int split_k, int stages, int dtype, int most_stages = 5) {
  if (M < 1 || K % kStageK != 0 || (G != 64 && G != 128) || TN % 16 != 0 || NP % 16 != 0 || stride_xm % 8 != 0 ||
      split_k < 1 || stages < 3 || stages > most_stages || (dtype != 0 && dtype != 1))
    return false;
  const Out o{y, bias, nullptr, static_cast<float*>(ws), static_cast<int*>(counters), M, N, split_k, 0};
  a = MmaArgs{o, x, static_cast<const uint4*>(qw), scales, static_cast<const uint8_t*>(zeros), M, NP, K, KT, KGP,
              TN, G, stride_xm, split_k, stages};
  return true;
}

// The contract's 16-bit weight pair from nibbles (0, 4) of v: ((M + q) - (M + z)) * s, each step exact
// but the last, which rounds as the contract does
template <typename T>
__device__ __forceinline__ uint32_t dq(uint32_t v, uint32_t mz, uint32_t s) {
  using H = Half16<T>;
  return H::mul2(H::sub2(lop3_magic<H::kMagic>(v), mz), s);
}

// The weight copies of one stage for R 16-row fragments of one warp (lane l: chunk l of both 64-k
// tiles) and, on lanes 0-5, their scale/zero chunks (slot j = scales of tile j's group). Shared
// destinations are 32-bit offsets from the thread's chunks in slot 0, fixed for the kernel: the
// slot's weights are [F][2 tiles][32] uint4 from base, its scales/zeros [F][kSzChunks] from uint4 sz_at
// of the slot (fragment r of warp w is F-index w * R + r); fragment r's sit r fragments further.
// W = false: the scale/zero chunks only (w4_wgmma.cu's WREG kernels load the weights to registers).
template <typename T, int R, bool W = true>
struct WeightFeed {
  const uint4* wsrc;   // this lane's weight chunk of fragment 0 at the next stage
  const char* szsrc;   // lanes < kSzChunks: this lane's scale or zero chunk of fragment 0 at the next stage
  int wnext, sznext;   // fragment r + 1's sources sit this far (uint4, bytes) from fragment r's (R = 2)
  int szstep;          // bytes per stage of szsrc
  bool wlive[R], szlive[R];
  uint32_t wdst, szdst;  // slot 0's shared addresses of this thread's chunks (fragment 0)
  __device__ __forceinline__ void init(const MmaArgs& a, uint32_t base, int sz_slot, int n0, int s_lo, int warp,
                                       int lane) {
    // group of tile j of stage s: 2s + j at G = 64, s at G = 128 (both tiles read the same chunk)
    const int j = lane < 4 ? lane >> 1 : lane - 4;
    const int per = a.G == 64 ? 2 : 1;
    const bool scale_lane = lane < 4;
    long long wsrc_at[R], sz_at[R];  // in uint4 of qw, in bytes from scales / zeros
#pragma unroll
    for (int r = 0; r < R; ++r) {
      wlive[r] = n0 + 16 * r < a.NP;
      const int nr = wlive[r] ? n0 + 16 * r : n0 < a.NP ? n0 : 0;
      const int tn = nr / a.TN, r0 = nr % a.TN;
      wsrc_at[r] = (((long long)tn * a.KT + 2 * s_lo) * a.TN + r0) * 2 + lane;
      const long long grp = (long long)tn * a.KGP + (a.G == 64 ? 2 * s_lo + j : s_lo);
      sz_at[r] = scale_lane ? (grp * a.TN + r0 + 8 * (lane & 1)) * static_cast<long long>(sizeof(T)) : grp * a.TN + r0;
      szlive[r] = wlive[r] && (scale_lane || (lane < kSzChunks && a.zeros != nullptr));
    }
    wsrc = a.qw + wsrc_at[0];
    szsrc = (scale_lane ? static_cast<const char*>(a.scales) : reinterpret_cast<const char*>(a.zeros)) + sz_at[0];
    wnext = R > 1 ? static_cast<int>(wsrc_at[R - 1] - wsrc_at[0]) : 0;
    sznext = R > 1 ? static_cast<int>(sz_at[R - 1] - sz_at[0]) : 0;
    szstep = scale_lane ? per * a.TN * static_cast<int>(sizeof(T)) : per * a.TN;
    wdst = base + ((warp * R) * 64 + lane) * 16;
    szdst = base + (sz_slot + (warp * R) * kSzChunks + lane) * 16;
  }
  __device__ __forceinline__ void issue(const MmaArgs& a, uint32_t slot_off) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (W && wlive[r]) {
        cp_async16_s(wdst + slot_off + r * 1024, wsrc + r * wnext);
        cp_async16_s(wdst + slot_off + r * 1024 + 512, wsrc + r * wnext + (long long)a.TN * 2);
      }
      if (szlive[r]) cp_async16_s(szdst + slot_off + r * kSzChunks * 16, szsrc + r * sznext);
    }
    wsrc += (long long)a.TN * 4;
    szsrc += szstep;
  }
};

__device__ __forceinline__ void wait_ring(int stages) {  // cp.async.wait_group STAGES - 2
  if (stages == 3) cp_async_wait<1>();
  else if (stages == 4) cp_async_wait<2>();
  else cp_async_wait<3>();
}

// The scale and (M + z) pairs of R 16-row fragments' rows g and g + 8 for 64-k tile j, from the
// fragments' scale/zero chunks in a slot ([R][kSzChunks] uint4 from sz)
template <typename T, int R>
__device__ __forceinline__ void frag_sz(uint32_t (&sc)[R][2], uint32_t (&mz)[R][2], const uint4* sz, int j, int g,
                                        bool asym) {
  constexpr uint32_t kM16 = Half16<T>::kMagic & 0xFFFFu;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const uint16_t* sp = reinterpret_cast<const uint16_t*>(sz + r * kSzChunks + 2 * j);
    const uint8_t* zp = reinterpret_cast<const uint8_t*>(sz + r * kSzChunks + 4 + j);
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      sc[r][e] = sp[g + 8 * e] * 0x10001u;
      mz[r][e] = (kM16 + (asym ? zp[g + 8 * e] : 8u)) * 0x10001u;
    }
  }
}

// The A fragments of steps 2h, 2h + 1 (word h of each row, shifts 0/4 and 8/12) of one 16-row
// fragment: wt its weight chunks, 64-k tile j; s/mz its scale and (M + z) pairs, rows g and g + 8.
// Step u of a tile takes k = 16c + 4u .. 16c + 4u + 3 for thread c of a quad (w4.cu's K order).
// decode_words: the same from the two words themselves (lo: row g, hi: row g + 8).
template <typename T>
__device__ __forceinline__ void decode_words(uint32_t (&af)[2][4], uint32_t lo, uint32_t hi, const uint32_t (&s)[2],
                                             const uint32_t (&mz)[2]) {
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    af[u][0] = dq<T>(lo >> (8 * u), mz[0], s[0]);
    af[u][1] = dq<T>(hi >> (8 * u), mz[1], s[1]);
    af[u][2] = dq<T>(lo >> (8 * u + 4), mz[0], s[0]);
    af[u][3] = dq<T>(hi >> (8 * u + 4), mz[1], s[1]);
  }
}
template <typename T>
__device__ __forceinline__ void decode_af(uint32_t (&af)[2][4], const uint4* wt, int j, int h, int g, int c,
                                          const uint32_t (&s)[2], const uint32_t (&mz)[2]) {
  decode_words<T>(af, reinterpret_cast<const uint32_t*>(wt + 32 * j)[(g * 4 + c) * 2 + h],
                  reinterpret_cast<const uint32_t*>(wt + 32 * j)[((g + 8) * 4 + c) * 2 + h], s, mz);
}

// Split-K by slices. store_frags_at (common.cuh) adds every partial into one zeroed fp32 buffer with
// atomics: at M = 64 that is an L2 atomic per output element and slice (qkv, split 4: 1.6 M), which
// made every split lose in run 8's tuner. Here slice z stores its tile to plane z of o.ws ([split, M,
// N], scratch: fully written before it is read) with plain stores; the CTA that completes the tile's
// counter sums the planes in slice order (its own from registers), so y is also the same whichever
// CTA comes last. No CTA waits for another: a wrong count leaves y unwritten, never hangs.
template <typename T, int R, int NTOK>
__device__ __forceinline__ void store_sliced(const Out& o, const float (&acc)[R][NTOK][4], int n0, int g, int c,
                                             bool active, int tile, int tok0) {
  if (o.split_k == 1) return store_frags_at<T, R, NTOK>(o, acc, n0, g, c, active, tile, 1, tok0);
  pdl_trigger();  // the next grid may be scheduled now (pdl.py: at the store)
  const long long plane = (long long)o.M * o.N;
  const int z_mine = static_cast<int>(blockIdx.z);
  if (active) {
    float* mine = o.ws + blockIdx.z * plane;
    each_out<R, NTOK>(o, acc, n0, g, c, tok0, [&](int row, int tok, float v) { mine[(long long)tok * o.N + row] = v; });
  }
  if (!arrive_last(o, tile, o.split_k)) return;
  if (active)
    each_out<R, NTOK>(o, acc, n0, g, c, tok0, [&](int row, int tok, float mine) {
      const long long e = (long long)tok * o.N + row;
      float v = 0.f;
      for (int z = 0; z < o.split_k; ++z) v += z == z_mine ? mine : __ldcg(o.ws + z * plane + e);
      if (o.bias != nullptr) v += Half16<T>::to_f(static_cast<const T*>(o.bias)[row]);  // no row scale here
      static_cast<T*>(o.y)[e] = Half16<T>::from_f(v);
    });
  if (threadIdx.x == 0) o.counters[tile] = 0;
}

// A thread's partial sums (each_out's elements) into its plane [M][N] of fp32: one pointer a token,
// stepped by the token column, and the rows' offsets as immediates (run 32: each_out's per-element
// 64-bit address and bounds, unrolled over 128 accumulators, made ~6 K instructions of a store that
// runs once a tile, every one fetched from L2)
template <int R, int NTOK>
__device__ __forceinline__ void store_partials(float* plane, const float (&acc)[R][NTOK][4], int n0, int g, int c,
                                               int tok0, int M, int N) {
  bool row_ok[R][2];
#pragma unroll
  for (int r = 0; r < R; ++r) row_ok[r][0] = n0 + 16 * r + g < N, row_ok[r][1] = n0 + 16 * r + 8 + g < N;
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    float* p = plane + (long long)(tok0 + 2 * c + e) * N + n0 + g;  // token 8 t + 2 c + e, row g
#pragma unroll
    for (int t = 0; t < NTOK; ++t, p += 8LL * N) {
      if (tok0 + 8 * t + 2 * c + e < M) {
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh)
            if (row_ok[r][hh]) p[16 * r + 8 * hh] = acc[r][t][2 * hh + e];
      }
    }
  }
}

// The same split-K by planes for the warp-specialized kernels' large tiles (w4_wgws.cu, i8_wgws.cu:
// 128 rows x up to 256 tokens, 128 sums a thread): store_sliced's sum, unrolled per register and
// per slice, made their epilogue ~75 K instructions, which missed the instruction cache (run 30, ncu:
// "no instruction" the first stall; split 3 took 3.4x split 1's time). Here the CTA that completes
// the tile's count reads every plane back, its own included, and sums them in slice order with one
// loop over the tile's elements (rows [row0, row0 + rows) x tokens [tok0, tok0 + toks), clipped to N
// and M) shared by its `threads` first threads: y is the same whichever CTA comes last, and the
// code does not grow with the tile. Every thread of the CTA calls arrive_last (the others of the
// `threads` through this function). Split 1 stores through ws_store.cuh instead.
template <typename T, int R, int NTOK>
__device__ __forceinline__ void store_planes(const Out& o, const float (&acc)[R][NTOK][4], int n0, int g, int c,
                                             bool active, int tile, int row0, int rows, int tok0, int toks,
                                             int threads) {
  pdl_trigger();  // the next grid may be scheduled now (pdl.py: at the store)
  const long long plane = (long long)o.M * o.N;
  if (active) store_partials<R, NTOK>(o.ws + blockIdx.z * plane, acc, n0, g, c, tok0, o.M, o.N);
  if (!arrive_last(o, tile, o.split_k)) return;
  // thread i sums row i mod lr (lr = min(rows, threads): consecutive threads, consecutive rows, so
  // each load is coalesced) at tokens i / lr + ts j, kU tokens at once: run 31 found one load in
  // flight a thread (a plane after the other, an element after the other) made the last CTA's sum
  // of a 128 x 256 tile ~40 us a split, longer than the GEMM
  constexpr int kU = 8;
  const int nr = min(rows, o.N - row0), nt = min(toks, o.M - tok0), lr = min(rows, threads), ts = threads / lr;
  const float* src = o.ws + (long long)tok0 * o.N + row0;
#pragma unroll 1
  for (int r = threadIdx.x % lr; r < nr; r += lr) {
    const float b = o.bias != nullptr ? Half16<T>::to_f(static_cast<const T*>(o.bias)[row0 + r]) : 0.f;
#pragma unroll 1
    for (int t = threadIdx.x / lr; t < nt; t += kU * ts) {
      float v[kU] = {};
#pragma unroll 2
      for (int z = 0; z < o.split_k; ++z)
#pragma unroll
        for (int u = 0; u < kU; ++u)
          if (t + u * ts < nt) v[u] += __ldcg(src + z * plane + (long long)(t + u * ts) * o.N + r);
#pragma unroll
      for (int u = 0; u < kU; ++u)
        if (t + u * ts < nt)
          static_cast<T*>(o.y)[(long long)(tok0 + t + u * ts) * o.N + row0 + r] = Half16<T>::from_f(v[u] + b);
    }
  }
  if (threadIdx.x == 0) o.counters[tile] = 0;
}


}  // namespace
