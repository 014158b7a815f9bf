// The warp-specialized kernels' store of y (w4_wgws.cu, i8_wgws.cu; sm_90a): each consumer warp's
// fp32 rows, 16 R weight rows x BM tokens in the wgmma accumulator layout, go to y [M, N] through
// shared memory. Run 32's knockouts found the old store (each_out: every element's address, bounds,
// bias and a 2-byte store, unrolled over the 128 accumulators a thread: ~6 K SASS instructions,
// fetched once a tile and so from L2 every time; ncu's first stall `no_instruction`) taking 40% of
// qkv's and 35% of gate_up's time at M = 2048 (W4A16, H100). Here the warp converts its accumulators
// to 16 bits and writes them with `stmatrix .trans` (four 8 x 8 matrices an instruction: the
// accumulator layout is stmatrix's fragment layout, and .trans turns a matrix's rows, weight rows,
// into its columns, so the staged rows are token-major as y is), then copies them out in 16-byte runs
// of 8 weight rows, a loop of a few instructions whatever the tile. A warp needs only its own rows,
// so the split-1 store and CLUSTER's (where each rank's own warps hold the summed rows) are one.
#pragma once
#include "common.cuh"
#include "wgmma.cuh"

namespace {

#ifdef TP_WGMMA
// A warp's staged token row: its 16 R weight rows and 16 bytes more, so the 8 tokens of one stmatrix
// matrix start 12 words apart (R = 1) or 20 (R = 2): distinct 4-bank groups
__host__ __device__ constexpr int rows_ld(int r) { return 16 * r + 8; }
// The shared memory of one warp's staging: BM tokens x rows_ld(R) 16-bit elements
__host__ __device__ constexpr int rows_bytes(int r, int bm) { return bm * rows_ld(r) * 2; }

__device__ __forceinline__ void stmatrix_x4_trans(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r0), "r"(r1),
               "r"(r2), "r"(r3)
               : "memory");
}

// y (+ bias) of one warp's rows: acc as each_out's (R fragments of 16 rows from row n0, NTOK token
// columns of 8 from tok0), with store_y's roundings (the fp32 sum + bias, rounded once to 16 bits;
// o.row_scale is null in both kernels). stage: rows_bytes(R, 8 NTOK) of shared memory, 16-byte
// aligned, that nothing else reads or writes now (the warp's share of the idle ring). Every lane
// of the warp calls it.
template <typename T, int R, int NTOK>
__device__ __forceinline__ void store_rows(const Out& o, const float (&acc)[R][NTOK][4], uint32_t stage, int n0,
                                           int tok0) {
  constexpr int kLd = rows_ld(R), kRuns = 2 * R;  // 8-row runs a token
  const int lane = threadIdx.x & 31, g = lane >> 2, j = lane & 7, mi = lane >> 3;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    float b[2];  // rows g and g + 8 of fragment r
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int row = n0 + 16 * r + 8 * hh + g;
      b[hh] = o.bias != nullptr && row < o.N ? Half16<T>::to_f(static_cast<const T*>(o.bias)[row]) : 0.f;
    }
    // matrix m of one stmatrix: rows g (+ 8 for odd m) x the tokens of column t + m / 2; lane 8m + j
    // gives the address of its transposed row j: token 8 (t + m / 2) + j
#pragma unroll
    for (int t = 0; t < NTOK; t += 2) {
      uint32_t v[4];
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        const float* e = acc[r][t + (m >> 1)] + 2 * (m & 1);
        v[m] = Half16<T>::pack(e[0] + b[m & 1], e[1] + b[m & 1]);
      }
      stmatrix_x4_trans(stage + ((8 * (t + (mi >> 1)) + j) * kLd + 16 * r + 8 * (mi & 1)) * 2, v[0], v[1], v[2], v[3]);
    }
  }
  __syncwarp();
  pdl_trigger();  // the next grid may be scheduled now (pdl.py: at the store)
  const bool vec = ((reinterpret_cast<uintptr_t>(o.y) | (2u * o.N)) & 15) == 0;
#pragma unroll 1
  for (int i = lane; i < 8 * NTOK * kRuns; i += 32) {
    const int tok = i / kRuns, col = 8 * (i % kRuns), gt = tok0 + tok, gr = n0 + col;
    if (gt >= o.M || gr >= o.N) continue;
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(stage + (tok * kLd + col) * 2));
    T* dst = static_cast<T*>(o.y) + (long long)gt * o.N + gr;
    if (vec && gr + 8 <= o.N) {
      *reinterpret_cast<uint4*>(dst) = v;
    } else {  // a partial run (N % 8 != 0, or y not 16-byte aligned): element by element
      const T* h = reinterpret_cast<const T*>(&v);
#pragma unroll
      for (int e = 0; e < 8; ++e)
        if (gr + e < o.N) dst[e] = h[e];
    }
  }
}

// Split-K through global planes (both warp-specialized kernels, split > 1 without CLUSTER), in the
// accumulators' own layout: each K slice writes float4 (r, t) of consumer thread i (its accumulators
// acc[r][t][0..3]) to plane z, tile `tile`, at [(r NTOK + t) x 256 + i], so every store of a warp is
// one 512-byte run; the slice that completes the tile's count (arrive_last) sums the planes in slice
// order (deterministic) into its registers, float4 by float4 as each thread holds them, and stores y
// as split 1 does (store_rows, through the idle ring). Run 33 measured the former plane path
// (store_planes: scalar partials in y's order, then one CTA summing element by element with 8 tokens
// in flight a thread) 10-17 us slower than the cluster sum at split 2 (W4A16 qkv and down, M = 256,
// H100). ws: split_k planes of tiles x 256 x R NTOK float4 (BN x BM floats a tile). Every thread of
// the CTA calls it (arrive_last's barriers); the producer warpgroup's return after arrive_last.
// Thread i's float4s of acc as one plane of a tile (`at`: the tile's float4 0 of the plane, + i), and
// the sum of n planes of a tile (`at` likewise, `plane` float4s apart) added to acc in plane order:
// store_sliced_rows' halves, and stream-K's (ws_stream.cuh)
template <int R, int NTOK>
__device__ __forceinline__ void write_plane(float4* at, const float (&acc)[R][NTOK][4]) {
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int t = 0; t < NTOK; ++t)
      __stcg(at + (r * NTOK + t) * 256, make_float4(acc[r][t][0], acc[r][t][1], acc[r][t][2], acc[r][t][3]));
}
template <int R, int NTOK>
__device__ __forceinline__ void add_planes(float (&acc)[R][NTOK][4], const float4* at, int n, long long plane) {
#pragma unroll 1
  for (int z = 0; z < n; ++z, at += plane)
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int t = 0; t < NTOK; ++t) {
        const float4 v = __ldcg(at + (r * NTOK + t) * 256);
        acc[r][t][0] += v.x, acc[r][t][1] += v.y, acc[r][t][2] += v.z, acc[r][t][3] += v.w;
      }
}

template <typename T, int R, int NTOK>
__device__ __forceinline__ void store_sliced_rows(const Out& o, float (&acc)[R][NTOK][4], uint32_t stage, int n0,
                                                  int tok0, int tile, int tiles) {
  constexpr int kC = R * NTOK;  // float4s a thread
  const long long plane = static_cast<long long>(tiles) * kC * 256;
  float4* ws = reinterpret_cast<float4*>(o.ws) + static_cast<long long>(tile) * kC * 256 + threadIdx.x;
  write_plane<R, NTOK>(ws + blockIdx.z * plane, acc);
  if (!arrive_last(o, tile, o.split_k)) return;
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int t = 0; t < NTOK; ++t)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[r][t][e] = 0.f;
  add_planes<R, NTOK>(acc, ws, o.split_k, plane);
  if (threadIdx.x == 0) o.counters[tile] = 0;
  store_rows<T, R, NTOK>(o, acc, stage, n0, tok0);  // every consumer thread is past arrive_last: the ring is idle
}
#endif  // TP_WGMMA

}  // namespace
