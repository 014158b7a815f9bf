// The per-warp pieces both grouped MoE decode kernels of moe_w4.cu share: a linear's weight and
// scale feed for one expert, the group epilogue on the per-CTA sum-of-x table, the activation
// sources of a routed block and the 16-bit roundings of h = silu(g) * u. Anonymous namespace, as
// common.cuh: each .cu is its own shared library.
#pragma once
#include "common.cuh"
#include "moe_route.cuh"
#include "w4_stage.cuh"

namespace {

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
    cp_async16_hint(&st.w[0][lane], w, policy);
    cp_async16_hint(&st.w[1][lane], w + tile_step, policy);
    w += 2 * tile_step;
    if (sz_lane) cp_async16(szdst, sz);
    sz += sz_step;
  }
};

// out += s * acc - s * (M + z) * sum x for the NG groups of one stage, the sums of x from the CTA's
// table entry of the stage (sum_x, w4_stage.cuh), as v6 / v7 do
template <typename T, int NTOK, int NG, bool ASYM>
__device__ __forceinline__ void group_fma(float (&out)[NTOK][4], float (&acc)[2][NTOK][4], const float2* xrow,
                                          const SzSlot<NG, ASYM>& sl, int g, int c) {
  if (NG == 1) {
#pragma unroll
    for (int t = 0; t < NTOK; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[0][t][i] += acc[1][t][i];
  }
#pragma unroll
  for (int gi = 0; gi < NG; ++gi) {
    float sc[2], z[2];
    slot_params<T, NG, ASYM>(sl, gi, g, sc, z);
    const float ol = sc[0] * (Half16<T>::kBase + z[0]), oh = sc[1] * (Half16<T>::kBase + z[1]);
#pragma unroll
    for (int t = 0; t < NTOK; ++t) {
      const float2 xs = xrow[(gi * NTOK + t) * 4 + c];
      out[t][0] = fmaf(sc[0], acc[gi][t][0], fmaf(-ol, xs.x, out[t][0]));
      out[t][1] = fmaf(sc[0], acc[gi][t][1], fmaf(-ol, xs.y, out[t][1]));
      out[t][2] = fmaf(sc[1], acc[gi][t][2], fmaf(-oh, xs.x, out[t][2]));
      out[t][3] = fmaf(sc[1], acc[gi][t][3], fmaf(-oh, xs.y, out[t][3]));
    }
  }
}

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

template <typename T>
__device__ __forceinline__ float round16(float v) { return Half16<T>::to_f(Half16<T>::from_f(v)); }

// h = round(round(silu(round g)) * round u), the loop's roundings (torch's silu: x / (1 + exp(-x)) in fp32)
template <typename T>
__device__ __forceinline__ T silu_mul(float g, float u) {
  const float gq = round16<T>(g), a = round16<T>(gq / (1.f + expf(-gq)));
  return Half16<T>::from_f(a * round16<T>(u));
}

}  // namespace
