// A linear's per-warp weight feed, shared by the grouped MoE decode (moe_w4.cu: every expert's
// linear stacked [E, ...]) and the dense decode by rows (w4_rows.cuh: one linear, e = 0): where a
// warp's 16 rows start at a stage, its cp.async of the stage's two 64-wide tiles and of its v7
// scale/zero chunks (SzSlot, w4_stage.cuh) into a ring slot. Anonymous namespace, as common.cuh:
// each .cu is its own shared library.
#pragma once
#include "common.cuh"
#include "w4_stage.cuh"

namespace {

struct Lin {  // one linear of every expert, stacked [E, ...] (a dense linear: E = 1)
  const uint4* q; const void* s; const uint8_t* z;
  int N, NP, K, KT, KGP, TN;
  __device__ __forceinline__ long long q_per_expert() const { return (long long)NP * KT * 2; }  // uint4
  __device__ __forceinline__ long long s_per_expert() const { return (long long)NP * KGP; }     // elements
};

// A warp's ring slot of one linear: a Stage and its scale slot (the MoE's down; the decode by rows)
template <int NG, bool ASYM>
struct DnSlot {
  Stage w;
  SzSlot<NG, ASYM> sz;
};

// A ring slot on A-byte rows of shared memory (alignas rounds its size up to A): a slot that starts
// off a 128-byte row makes each 256-byte LDS.64 of its stage three wavefronts where two do
template <class Slot, int A>
struct alignas(A) AlignedSlot : Slot {};

// The warp's sources for linear L of expert e: weights at stage s_lo of rows n0.., and (lane <
// kChunks) the lane's scale or zero chunk, as v7 copies them (SzSlot, w4_stage.cuh)
template <typename T, int NG>
struct Feed {
  const uint4* w;
  const char* sz;
  long long sz_step;  // bytes to the next stage's chunk
  __device__ __forceinline__ void init(const Lin& L, int e, int n0, int s_lo, int lane, int chunk) {
    const int tn = n0 / L.TN, r0 = n0 % L.TN;
    w = L.q + e * L.q_per_expert() + (((long long)tn * L.KT + 2 * s_lo) * L.TN + r0) * 2 + lane;
    const long long grp0 = e * L.s_per_expert() + (long long)tn * L.KGP * L.TN + (long long)s_lo * NG * L.TN;
    const bool is_scale = chunk < 2 * NG;
    sz = is_scale ? reinterpret_cast<const char*>(static_cast<const T*>(L.s) + grp0 + (chunk >> 1) * L.TN + r0 + 8 * (chunk & 1))
                  : reinterpret_cast<const char*>(L.z + grp0 + (chunk - 2 * NG) * L.TN + r0);  // only where ASYM
    sz_step = (long long)NG * L.TN * (is_scale ? sizeof(T) : 1);
  }
  __device__ __forceinline__ void issue(Stage& st, uint4* szdst, bool sz_lane, long long tile_step, int lane,
                                        uint64_t policy) {
    if constexpr ((kKnockout & kKoLoad) == 0) {
      cp_async16_hint(&st.w[0][lane], w, policy);
      cp_async16_hint(&st.w[1][lane], w + tile_step, policy);
    }
    w += 2 * tile_step;
    if ((kKnockout & kKoScales) == 0 && sz_lane) cp_async16(szdst, sz);
    sz += sz_step;
  }
};


// One warp's feed of linear L (expert e) into its ring of DnSlots, as v7 copies (the MoE's down by
// token, the decode by rows): lanes < kChunks also copy scale/zero chunk `lane` of each stage
template <typename T, int NG, bool ASYM>
struct DnFeed {
  Feed<T, NG> f;
  long long tile_step;
  uint64_t policy;
  bool sz_lane;
  __device__ __forceinline__ DnFeed(const Lin& L, int e, int n0, int s_lo, int lane) {
    sz_lane = lane < SzSlot<NG, ASYM>::kChunks;
    f.init(L, e, n0, s_lo, lane, sz_lane ? lane : 0);
    tile_step = (long long)L.TN * 2;
    policy = l2_evict_first();
  }
  __device__ __forceinline__ void issue(DnSlot<NG, ASYM>& slot, int lane) {
    f.issue(slot.w, &slot.sz.v[lane], sz_lane, tile_step, lane, policy);
  }
};

// A warp ring's first STAGES - 1 stages of its nst, one commit group each (empty past nst, so that
// cp_async_wait's group counts hold)
template <int STAGES, typename Issue>
__device__ __forceinline__ void ring_prologue(int nst, Issue issue) {
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < nst) issue(s);
    cp_async_commit();
  }
}

// Shared memory of a CTA of by-rows warps (the MoE's few-token kernels, the dense decode by rows): its
// ring [warps][stages] of Slot, each warp's table of sums (per_w stages of NG groups: a float2 per quad
// lane) and the staged x (16-bit, x_bytes)
template <typename Slot>
constexpr int token_smem(int warps, int stages, int x_bytes, int per_w, int ng) {
  return warps * (stages * static_cast<int>(sizeof(Slot)) + per_w * ng * 4 * 8) + x_bytes;
}

// The warp's table of sums of x for nst stages of tokens 0 .. tokens - 1 (sum_x's layout at one token
// column: entry (j, gi, c) holds the sums of tokens 2c and 2c + 1 over group gi of stage j). Token t's
// 16-bit row starts at xs + t * tok_stride (uint4: 8 values); lanes 0-15 add a chunk each, a group is
// 16 / NG lanes, shuffled to its first lane. Entries of tokens past `tokens` stay unwritten: their
// MMA columns are never stored.
template <typename T, int NG>
__device__ __forceinline__ void row_sums(float2* xsum, const uint4* xs, int nst, int tokens, int tok_stride, int lane) {
  constexpr int kLanes = 16 / NG;
  float* sums = reinterpret_cast<float*>(xsum);
  for (int t = 0; t < tokens; ++t)
    for (int j = 0; j < nst; ++j) {
      float s = 0.f;
      if (lane < 16) {
        const uint4 v = xs[t * tok_stride + j * 16 + lane];
        const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float2 f = Half16<T>::unpack(w[i]);
          s += f.x + f.y;
        }
      }
#pragma unroll
      for (int d = kLanes / 2; d > 0; d >>= 1) s += __shfl_xor_sync(0xffffffffu, s, d);
      if (lane < 16 && lane % kLanes == 0) sums[((j * NG + lane / kLanes) * 4 + t / 2) * 2 + (t & 1)] = s;
    }
}

// x fragments of one stage at one token column (load_x's order: thread c's 32 bytes of each tile)
struct Xv {
  uint4 v[1][2][2];
};
// ... of stage j of the staged row xs
__device__ __forceinline__ Xv staged_x(const uint4* xs, int j, int c) {
  Xv x;
#pragma unroll
  for (int i = 0; i < 4; ++i) x.v[0][i >> 1][i & 1] = xs[j * 16 + 2 * c + 8 * (i >> 1) + (i & 1)];
  return x;
}

// A warp's pass over its nst stages through its ring of STAGES slots (the first STAGES - 1 already
// issued): per stage, x's fragments (read before the wait, so the load overlaps it), the wait and
// __syncwarp that publish slot rd (lane l's chunks are read by other lanes) and free slot wr, the
// refill of wr, then math(j, rd, x) unless the knockout leaves the math out
template <int STAGES, typename Issue, typename Math>
__device__ __forceinline__ void ring_pass(int nst, const uint4* xs, int c, Issue issue, Math math) {
  int rd = 0, wr = STAGES - 1;
  for (int j = 0; j < nst; ++j) {
    const Xv x = staged_x(xs, j, c);
    cp_async_wait<STAGES - 2>();
    __syncwarp();
    if (j + STAGES - 1 < nst) issue(wr);
    cp_async_commit();
    wr = wr + 1 == STAGES ? 0 : wr + 1;
    if constexpr ((kKnockout & kKoMath) == 0) math(j, rd, x);
    rd = rd + 1 == STAGES ? 0 : rd + 1;
  }
}

// ring_pass for the kernels that read x per stage (w4_rowsx.cuh, moe_token.cuh's x-per-stage builds):
// load(j, xv) reads stage j's x fragments from L1 before the wait, so the load overlaps it, and the
// loop is unrolled by the ring, so slot rd is a constant (v7's form: the stage is ~20 SASS
// instructions shorter than with a slot index in a register)
template <int STAGES, int NTOK, typename Load, typename Issue, typename Math>
__device__ __forceinline__ void ring_pass_x(int nst, Load load, Issue issue, Math math) {
  for (int j0 = 0; j0 < nst; j0 += STAGES) {
#pragma unroll
    for (int rd = 0; rd < STAGES; ++rd) {
      const int j = j0 + rd;
      if (j >= nst) break;
      uint4 xv[NTOK][2][2];
      load(j, xv);
      cp_async_wait<STAGES - 2>();
      __syncwarp();  // slot rd's bytes and chunks (copied by other lanes) are visible; the slot before it is free
      if (j + STAGES - 1 < nst) issue(rd == 0 ? STAGES - 1 : rd - 1);
      cp_async_commit();
      if constexpr ((kKnockout & kKoMath) == 0) math(j, rd, xv);
    }
  }
}

}  // namespace
