// The grouped MoE decode's arguments and its in-kernel routing (moe_w4.cu): the stacked linears,
// the step's arguments (and their bounds) and route_block, which turns a block slot into (expert,
// its rows' pair ids) from the top-k ids, so that no separate align launch runs before the
// kernels. Anonymous namespace, as common.cuh: each .cu is its own shared library.
#pragma once
#include "common.cuh"
#include "w4_feed.cuh"  // Lin

namespace {

constexpr int kMaxExperts = 1024;
constexpr int kMaxPairs = 2048;

struct MoeArgs {
  const void* x; const void* ids; const void* wts;
  Lin gate, up, down;
  void* h; void* y; float* ws; int* counters;
  int T, topk, E, stride_xm, ids64, wts32, split;
  int combine;  // routed down at split 1: 16-bit results by pair into ws, summed by moe_combine_kernel
};

// the top-k id of pair p
__device__ __forceinline__ int expert_of(const MoeArgs& a, long long p) {
  return a.ids64 ? static_cast<int>(static_cast<const long long*>(a.ids)[p]) : static_cast<const int*>(a.ids)[p];
}

struct Route {
  int e, rows;
  int pair[16];
};

// Block slot b of the routing -> r (expert, its rows' pair ids); false (for the whole CTA) when the
// routing has fewer blocks. scratch: E + T*k ints of shared memory (the ring's, before it fills).
template <int BM>
__device__ bool route_block(const MoeArgs& a, int b, Route& r, int* scratch) {
  int* cnt = scratch;
  int* ids = scratch + a.E;
  const int n = a.T * a.topk, tid = threadIdx.x, lane = tid & 31;
  for (int i = tid; i < a.E; i += blockDim.x) cnt[i] = 0;
  __syncthreads();
  for (int i = tid; i < n; i += blockDim.x) {
    const int e = expert_of(a, i);
    ids[i] = e;
    if (e >= 0 && e < a.E) atomicAdd(cnt + e, 1);
  }
  __syncthreads();
  if (tid < 32) {
    int run = 0, found = -1, j = 0;
    for (int base = 0; base < a.E && found < 0; base += 32) {  // blocks per expert, scanned in id order
      const int e = base + lane, nb = e < a.E ? (cnt[e] + BM - 1) / BM : 0;
      int incl = nb;
#pragma unroll
      for (int d = 1; d < 32; d <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, incl, d);
        if (lane >= d) incl += v;
      }
      const int start = run + incl - nb;
      const unsigned hit = __ballot_sync(0xffffffffu, b >= start && b < start + nb);
      if (hit) {
        const int src = __ffs(hit) - 1;
        found = base + src;
        j = b - __shfl_sync(0xffffffffu, start, src);
      }
      run += __shfl_sync(0xffffffffu, incl, 31);
    }
    if (found >= 0) {  // its pairs ranked lo .. lo + rows - 1 among the expert's, in pair order
      const int lo = j * BM, rows = min(cnt[found] - lo, BM);
      int seen = 0;
      for (int base = 0; base < n && seen < lo + rows; base += 32) {
        const int i = base + lane;
        const bool mine = i < n && ids[i] == found;
        const unsigned bal = __ballot_sync(0xffffffffu, mine);
        const int rank = seen + __popc(bal & ((1u << lane) - 1));
        if (mine && rank >= lo && rank < lo + rows) r.pair[rank - lo] = i;
        seen += __popc(bal);
      }
      if (lane == 0) r.rows = rows;
    }
    if (lane == 0) r.e = found;
  }
  __syncthreads();  // r is published; the scratch may be overwritten by the ring
  return r.e >= 0;
}

}  // namespace
