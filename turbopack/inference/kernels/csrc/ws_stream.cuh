// Stream-K for the W4A16 / W8A16 warp-specialized kernel (w4_wgws.cu, STREAM; sm_90a). Split-K cuts
// every tile's K into the same number of slices, so a layer's CTAs come in multiples of its tiles:
// qkv at M = 256 has 48 tiles of 128 x 256, and 2 slices fill 96 of the H100's 132 SMs while 3 would
// spill into a second wave (run 33: 29.2 us, bf16 23.6). Here P CTAs (one an SM) take equal runs of
// the U = tiles x S 64-k stages, in tile-major order: CTA c streams stages [c U / P, (c + 1) U / P).
// The host keeps a run shorter than a tile (ceil(U / P) < S), so a run touches at most two tiles: the
// tail of one (k from inside it to its end) and the head of the next (k from 0), and the head is the
// run's last segment. The CTA whose run holds a tile's k = 0 finishes that tile: it waits for the
// tile's other slices (each a CTA's FIRST segment, which waits on nothing: no cycle), adds their
// planes to its own sums in slice order (deterministic) and stores y through its then idle ring; the
// others write their sums as a plane and count on the tile's counter. The grid is at most the SMs
// with one CTA each, so every CTA a head waits on runs.
#pragma once
#include "common.cuh"
#include "ws_store.cuh"

namespace {

// One segment of a CTA's run: tile `tile`, 64-k stages [lo, hi). A head (lo == 0) waits for `peers`
// slices; another writes plane `plane` (its position among the tile's slices past the head, less one)
struct SkSeg {
  int tile, lo, hi, peers, plane;
};

// The CTA whose run holds stage unit u (the largest c with c U / P <= u)
__host__ __device__ __forceinline__ int sk_cta(long long u, int P, long long U) {
  return static_cast<int>(((u + 1) * P - 1) / U);
}

// CTA c's segments (one or two) of P CTAs over `tiles` tiles of S stages each
__host__ __device__ __forceinline__ int sk_segments(SkSeg (&s)[2], int c, int P, int S, int tiles) {
  const long long U = static_cast<long long>(tiles) * S;
  const long long u1 = U * (c + 1) / P;
  int n = 0;
  for (long long u = U * c / P; u < u1 && n < 2; ++n) {
    const int t = static_cast<int>(u / S);
    const long long t0 = static_cast<long long>(t) * S, end = u1 < t0 + S ? u1 : t0 + S;
    const int first = sk_cta(t0, P, U), last = sk_cta(t0 + S - 1, P, U);
    s[n] = SkSeg{t, static_cast<int>(u - t0), static_cast<int>(end - t0), last - first, c - first - 1};
    u = end;
  }
  return n;
}

// A CTA's plan: its segments, their count, the tiles and the token tiles (tile t is row tile t / tx,
// token tile t % tx). It lives in shared memory: the producer's 40 registers spilled it, and the
// consumers re-read it past each segment's barriers rather than hold it across the stage loop
struct SkPlan {
  SkSeg seg[2];
  int n, tiles, tx;
};

// The launchers' check of a stream-K grid: one CTA an SM at most, so every CTA a head waits on
// runs, and a run shorter than a tile (ceil(U / P) < S), so a head is its CTA's last segment
inline bool sk_fits(int ctas, long long units, int S) {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    return false;
  return ctas <= sms && ctas <= units && (units + ctas - 1) / ctas < S;
}

#ifdef TP_WGMMA
// The SK kernels' plan, in static shared memory that only they reference; thread 0 writes it before a
// CTA barrier
__device__ __forceinline__ SkPlan* sk_plan(int S, int tiles, int tx) {
  __shared__ SkPlan plan;
  if (threadIdx.x == 0)
    plan.n = sk_segments(plan.seg, blockIdx.x, gridDim.x, S, tiles), plan.tiles = tiles, plan.tx = tx;
  return &plan;
}

__device__ __forceinline__ int ld_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// A slice that is not its tile's head: its sums as plane s.plane of the tile (float4 (r, t) of consumer
// thread i at [(r NTOK + t) x 256 + i], as store_sliced_rows lays them), then one count on the tile.
// The 256 consumer threads call it.
template <int R, int NTOK>
__device__ __forceinline__ void sk_publish(const Out& o, const float (&acc)[R][NTOK][4], const SkSeg& s, int tiles) {
  constexpr int kC = R * NTOK;
  write_plane<R, NTOK>(
      reinterpret_cast<float4*>(o.ws) + (static_cast<long long>(s.plane) * tiles + s.tile) * kC * 256 + threadIdx.x,
      acc);
  __threadfence();  // every thread's plane before the count (the fence, then one relaxed add: a release)
  asm volatile("bar.sync 1, 256;\n" ::: "memory");
  if (threadIdx.x == 0) atomicAdd(o.counters + s.tile, 1);
}

// A tile's head: once its s.peers slices have counted, their planes added to acc in plane order, the
// counter re-zeroed, y stored as split 1 does (store_rows; the head is the CTA's last segment, so its
// ring is idle once both warpgroups pass the barrier). The 256 consumer threads call it.
template <typename T, int R, int NTOK>
__device__ __forceinline__ void sk_finish(const Out& o, float (&acc)[R][NTOK][4], const SkSeg& s, int tiles,
                                          uint32_t stage, int n0, int tok0) {
  constexpr int kC = R * NTOK;
  if (threadIdx.x == 0 && s.peers > 0) {
    while (ld_acquire(o.counters + s.tile) < s.peers) __nanosleep(32);
    o.counters[s.tile] = 0;  // every slice has counted: no one else touches it in this launch
  }
  asm volatile("bar.sync 1, 256;\n" ::: "memory");
  const float4* ws = reinterpret_cast<const float4*>(o.ws) + static_cast<long long>(s.tile) * kC * 256 + threadIdx.x;
  add_planes<R, NTOK>(acc, ws, s.peers, static_cast<long long>(tiles) * kC * 256);
  store_rows<T, R, NTOK>(o, acc, stage, n0, tok0);
}
#endif  // TP_WGMMA

}  // namespace
