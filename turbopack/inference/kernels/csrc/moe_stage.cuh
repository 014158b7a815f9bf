// The per-warp pieces both grouped MoE decode kernels of moe_w4.cu share: a linear's weight and
// scale feed for one expert, the activation sources of a routed block and the 16-bit roundings of
// h = silu(g) * u. Anonymous namespace, as common.cuh: each .cu is its own shared library.
#pragma once
#include "common.cuh"
#include "moe_route.cuh"
#include "w4_feed.cuh"  // Lin, DnSlot, Feed
#include "w4_stage.cuh"

namespace {

// A warp's ring slot of gate_up: the (gate, up) Stages and their scale slots (down's: DnSlot, w4_feed.cuh)
template <int NG, bool ASYM>
struct GuSlot {
  Stage w[2];
  SzSlot<NG, ASYM> sz[2];
};

// One warp's gate and up feeds of expert e into its ring's GuSlots (both kernels' gate_up): lanes <
// kChunks copy gate's scale chunk `lane`, the next kChunks lanes up's
template <typename T, int NG, bool ASYM>
struct GateUpFeed {
  static constexpr int kChunks = SzSlot<NG, ASYM>::kChunks;
  Feed<T, NG> gate, up;
  long long tile_step;
  uint64_t policy;
  int chunk;
  bool gate_lane, up_lane;
  __device__ __forceinline__ GateUpFeed(const MoeArgs& a, int e, int n0, int s_lo, int lane) {
    const bool sz_lane = lane < 2 * kChunks;
    chunk = lane < kChunks ? lane : (sz_lane ? lane - kChunks : 0);
    gate_lane = lane < kChunks, up_lane = sz_lane && lane >= kChunks;
    gate.init(a.gate, e, n0, s_lo, lane, chunk);
    up.init(a.up, e, n0, s_lo, lane, chunk);
    tile_step = (long long)a.gate.TN * 2;
    policy = l2_evict_first();
  }
  __device__ __forceinline__ void issue(GuSlot<NG, ASYM>& slot, int lane) {
    gate.issue(slot.w[0], &slot.sz[0].v[chunk], gate_lane, tile_step, lane, policy);
    up.issue(slot.w[1], &slot.sz[1].v[chunk], up_lane, tile_step, lane, policy);
  }
};

// Activation rows of this thread's token columns (slot 8t + g of the block), stage s_lo; x is
// [*, stride] with the row of slot s at row_of(pair of s)
template <typename T, int NTOK>
__device__ __forceinline__ void x_sources(const uint4* (&xsrc)[NTOK], bool (&has)[NTOK], const void* x, long long stride,
                                          const Route& r, int div, int s_lo, int g, int c) {
#pragma unroll
  for (int t = 0; t < NTOK; ++t) {
    const int slot = 8 * t + g;
    has[t] = slot < r.rows;
    const long long row = has[t] ? r.pair[slot] / div : 0;
    xsrc[t] = reinterpret_cast<const uint4*>(static_cast<const T*>(x) + row * stride + s_lo * kStageK + 16 * c);
  }
}

// h = round(round(silu(round g)) * round u), the loop's roundings (common.cuh act_mul)
template <typename T>
__device__ __forceinline__ T silu_mul(float g, float u) { return act_mul<T>(kActSilu, g, u); }

}  // namespace
