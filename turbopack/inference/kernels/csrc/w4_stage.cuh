// The w4 decode stage shared by w4.cu (the dense decode) and moe_w4.cu (the grouped MoE decode):
// the 128-k ring stage of one warp, its v7 scale/zero slot, the activation fragments, v6's per-CTA
// sums of x and the weight MMAs in the permuted K order described at the top of w4.cu. Anonymous
// namespace, as common.cuh: each .cu is its own shared library.
#pragma once
#include "common.cuh"

namespace {

constexpr int kWarps = 4;   // 4 x 16 rows = one 64-row sm90 tile per CTA
constexpr int kStageK = 128;

// One stage of one warp: 128 k of its 16 rows, as in global memory (two 512-byte tiles).
struct Stage {
  uint4 w[2][32];
};

// A warp's share of the v6/v7/v8 decode CTA's dynamic shared memory: the weight ring
// [kWarps][STAGES], the scale/zero ring [kWarps][STAGES] (SZR: v7, v8; v6 has none), then the
// per-CTA sum-of-x table (w4.cu's launchers size the allocation in this order).
template <int STAGES, typename Sz, bool SZR>
struct RingSmem {
  Stage* ring;
  Sz* szring;
  float2* xsum;
  __device__ __forceinline__ RingSmem(uint4* smem, int warp) {
    Stage* rings = reinterpret_cast<Stage*>(smem);
    ring = rings + warp * STAGES;
    szring = reinterpret_cast<Sz*>(rings + kWarps * STAGES) + warp * STAGES;
    xsum = reinterpret_cast<float2*>(rings + kWarps * STAGES) +
           (SZR ? kWarps * STAGES * sizeof(Sz) / sizeof(float2) : 0);
  }
};

// x fragments of one 128-wide stage, `off` uint4 past xsrc (thread c's 32 bytes of each tile); a missing
// token's lanes get zeros. ALL (v7): read unpredicated, every lane its token row whether or not the
// token exists (xsrc points a missing token at token 0). A missing token's column of B then holds
// another token's x; MMA columns are independent, and store_tile never stores a column past M, so
// only the existing tokens' sums are used. Saves the per-stage zeroing and predication.
template <int NTOK, bool ALL = false>
__device__ __forceinline__ void load_x(uint4 (&xv)[NTOK][2][2], const uint4* const (&xsrc)[NTOK],
                                       const bool (&has_tok)[NTOK], int off) {
  if constexpr ((kKnockout & kKoX) != 0) {
#pragma unroll
    for (int t = 0; t < NTOK; ++t)
#pragma unroll
      for (int j = 0; j < 4; ++j) xv[t][j >> 1][j & 1] = make_uint4(0x3f803f80u, 0x3f803f80u, 0x3f803f80u, 0x3f803f80u);
    return;
  }
#pragma unroll
  for (int t = 0; t < NTOK; ++t)
#pragma unroll
    for (int j = 0; j < 4; ++j)
      xv[t][j >> 1][j & 1] = ALL || has_tok[t] ? __ldg(xsrc[t] + off + 8 * (j >> 1) + (j & 1)) : make_uint4(0, 0, 0, 0);
}

// xsum[((j * NG + gi) * NTOK + t) * 4 + c] = (sum x of token 8t+2c, of 8t+2c+1) over group gi of
// stage first + j (less wrap once it reaches wrap; stages counted from xsrc), for j < nst: v5's
// all-ones MMAs (D column = token, rows all equal: row g kept). v6: first 0, wrap nst (no wrap);
// v8: a stripe's cyclic stage range (w4.cu); the grouped MoE decode: first 0, wrap nst.
template <typename T, int NTOK, int NG>
__device__ __forceinline__ void sum_x(float2* xsum, const uint4* const (&xsrc)[NTOK], const bool (&has_tok)[NTOK],
                                     int nst, int first, int wrap, int warp, int g, int c) {
  using H = Half16<T>;
  const uint32_t ones[4] = {H::kOnes, H::kOnes, H::kOnes, H::kOnes};
  for (int j = warp; j < nst; j += kWarps) {
    uint4 xv[NTOK][2][2];
    const int stage = first + j < wrap ? first + j : first + j - wrap;
    load_x<NTOK>(xv, xsrc, has_tok, stage * (kStageK / 8));
    float xs[2][NTOK][4];
#pragma unroll
    for (int tile = 0; tile < 2; ++tile)
#pragma unroll
      for (int t = 0; t < NTOK; ++t) {
#pragma unroll
        for (int i = 0; i < 4; ++i) xs[tile][t][i] = 0.f;
#pragma unroll
        for (int step = 0; step < 4; ++step) {
          const uint4& q = xv[t][tile][step >> 1];
          H::mma(xs[tile][t], ones, (step & 1) ? q.z : q.x, (step & 1) ? q.w : q.y);
        }
      }
    if (NG == 1) {
#pragma unroll
      for (int t = 0; t < NTOK; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i) xs[0][t][i] += xs[1][t][i];
    }
    if (g == 0) {
#pragma unroll
      for (int gi = 0; gi < NG; ++gi)
#pragma unroll
        for (int t = 0; t < NTOK; ++t) xsum[((j * NG + gi) * NTOK + t) * 4 + c] = make_float2(xs[gi][t][0], xs[gi][t][1]);
    }
  }
}

// acc[tile][t] = sum over the stage's 128 k of (M + q) x: v5's weight MMAs (fragment order above).
// ONE (one group per stage): both tiles accumulate into acc[0], saving the zeroing of acc[1] and
// the four FADDs that would join them (v7). NGZ > 0 (the rows with x per stage, w4_rowsx.cuh): one
// HSUB2 a register removes zp[group][0 / 1], the 16-bit pair M + z of row g / g + 8 (a0/a2 hold row
// g's pairs, a1/a3 row g + 8's), so the MMAs sum (q - z) x; tile i is group i at NGZ = 2.
template <typename T, int NTOK, bool ONE = false, int NGZ = 0>
__device__ __forceinline__ void weight_mma(float (&acc)[2][NTOK][4], const Stage& st, const uint4 (&xv)[NTOK][2][2],
                                           int g, int c, const uint32_t (*zp)[2] = nullptr) {
  using H = Half16<T>;
  auto code = [&](uint32_t v, int tile, int row8) {
    const uint32_t r = lop3_magic<H::kMagic>(v);
    if constexpr (NGZ > 0) return H::sub2(r, zp[NGZ == 1 ? 0 : tile][row8]);
    return r;
  };
#pragma unroll
  for (int tile = 0; tile < 2; ++tile) {
    if (!ONE || tile == 0) {
#pragma unroll
      for (int t = 0; t < NTOK; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[tile][t][i] = 0.f;
    }
    const int at = ONE ? 0 : tile;
    const uint2 wl = reinterpret_cast<const uint2*>(&st.w[tile][0])[g * 4 + c];        // row g, bytes 8c..
    const uint2 wh = reinterpret_cast<const uint2*>(&st.w[tile][0])[(g + 8) * 4 + c];  // row g + 8
#pragma unroll
    for (int step = 0; step < 4; ++step) {
      const uint32_t lo = (step >> 1) ? wl.y : wl.x, hi = (step >> 1) ? wh.y : wh.x;
      const int sh = 8 * (step & 1);
      const uint32_t af[4] = {code(lo >> sh, tile, 0), code(hi >> sh, tile, 1), code(lo >> (sh + 4), tile, 0),
                              code(hi >> (sh + 4), tile, 1)};
#pragma unroll
      for (int t = 0; t < NTOK; ++t) {
        const uint4& q = xv[t][tile][step >> 1];
        H::mma(acc[at][t], af, (step & 1) ? q.z : q.x, (step & 1) ? q.w : q.y);
      }
    }
  }
}

// v7 (VARIANT 2) = v6 with each stage's scales and zero points copied into the ring with its
// weights. v5/v6 load them with 2-byte __ldg one stage ahead: a DRAM round trip per stage with
// only one stage (~170 instructions of one warp) to hide it, where the weights have STAGES-1. Per
// warp and stage, 16-byte chunks 2gi and 2gi+1 hold the 16 scales of group gi (rows 0-7, 8-15) and
// chunk 2NG+gi its 16 zero points; lane l < chunks copies chunk l in the stage's cp.async group, so
// the wait + __syncwarp that publish the weights publish these too. Needs 16-byte aligned scales
// and zeros (the rows of a warp start at a multiple of 16); otherwise the launcher runs v6.
template <int NG, bool ASYM>
struct SzSlot {
  static constexpr int kChunks = (ASYM ? 3 : 2) * NG;
  uint4 v[kChunks];
};

// the scale and zero point (as float) of rows g and g + 8 for group gi, from a v7 ring slot
template <typename T, int NG, bool ASYM>
__device__ __forceinline__ void slot_params(const SzSlot<NG, ASYM>& sl, int gi, int g, float (&s)[2], float (&z)[2]) {
  const T* sc = reinterpret_cast<const T*>(&sl.v[2 * gi]);
  s[0] = Half16<T>::to_f(sc[g]);
  s[1] = Half16<T>::to_f(sc[g + 8]);
  if constexpr (ASYM) {
    const uint8_t* zc = reinterpret_cast<const uint8_t*>(&sl.v[2 * NG + gi]);
    z[0] = static_cast<float>(zc[g]);
    z[1] = static_cast<float>(zc[g + 8]);
  } else {
    z[0] = z[1] = 8.f;
  }
}

// The scale s and the offset s * (M + z) of rows g and g + 8 for group gi, from a v7 ring slot:
// M + z is built from z's bits: M = 2^e is 128 (bf16) or 1024 (fp16) and z <= 15 < M, so M + z has
// M's exponent and its mantissa is z in units of 2^(e - 23): M's bits plus z << (23 - e), one
// integer add where the float conversion and add take two.
template <typename T, int NG, bool ASYM>
__device__ __forceinline__ void slot_scale_offset(const SzSlot<NG, ASYM>& sl, int gi, int g, float (&s)[2],
                                                  float (&off)[2]) {
  constexpr int kUlpShift = Half16<T>::kBase == 128.f ? 16 : 13;  // 23 - log2(M): M = 128 (bf16), 1024 (fp16)
  const T* sc = reinterpret_cast<const T*>(&sl.v[2 * gi]);
  const uint8_t* zc = reinterpret_cast<const uint8_t*>(&sl.v[2 * NG + gi]);
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    s[e] = Half16<T>::to_f(sc[g + 8 * e]);
    const uint32_t z = ASYM ? zc[g + 8 * e] : 8u;
    off[e] = s[e] * __int_as_float(__float_as_int(Half16<T>::kBase) + static_cast<int>(z << kUlpShift));
  }
}

// out += s * acc - s * (M + z) * sum x for the NG groups of one stage: scales and zero points from
// the stage's ring slot (v7's), the sums of x from the stage's row of sum_x's table (xrow). v8 and
// the grouped MoE decode; v6/v7 keep their own loop (v6 reads its scales from registers)
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

// (M + z) of rows g and g + 8 of group gi as 16-bit pairs: z <= 15 lands in the mantissa of M = 128
// (bf16, unit 1) or 1024 (fp16, unit 1), so the bits are M's plus z in each half (sym: z = 8)
template <typename T, int NG, bool ASYM>
__device__ __forceinline__ void zero_pairs(const SzSlot<NG, ASYM>& sl, int gi, int g, uint32_t (&zp)[2]) {
  constexpr uint32_t kM = Half16<T>::kMagic, kBoth = 0x00010001u;
  if constexpr (ASYM) {
    const uint8_t* zc = reinterpret_cast<const uint8_t*>(&sl.v[2 * NG + gi]);
    zp[0] = kM + zc[g] * kBoth;
    zp[1] = kM + zc[g + 8] * kBoth;
  } else {
    zp[0] = zp[1] = kM + 8u * kBoth;
  }
}

// out += s * acc for the stage's groups (tile i is group i at G = 64; both tiles group 0 at G = 128)
template <typename T, int NTOK, int NG, bool ASYM>
__device__ __forceinline__ void scale_acc(float (&out)[NTOK][4], const float (&acc)[2][NTOK][4],
                                          const SzSlot<NG, ASYM>& sl, int g) {
#pragma unroll
  for (int tile = 0; tile < 2; ++tile) {
    const T* sc = reinterpret_cast<const T*>(&sl.v[2 * (NG == 1 ? 0 : tile)]);
    const float s0 = Half16<T>::to_f(sc[g]), s1 = Half16<T>::to_f(sc[g + 8]);
#pragma unroll
    for (int t = 0; t < NTOK; ++t) {
      out[t][0] = fmaf(s0, acc[tile][t][0], out[t][0]);
      out[t][1] = fmaf(s0, acc[tile][t][1], out[t][1]);
      out[t][2] = fmaf(s1, acc[tile][t][2], out[t][2]);
      out[t][3] = fmaf(s1, acc[tile][t][3], out[t][3]);
    }
  }
}

// One stage of the rows with x per stage (w4_rowsx.cuh; moe_token.cuh's x-per-stage builds): the
// MMAs sum (q - z) x from the ring slot's codes and zero points, then out += s * acc
template <typename T, int NTOK, int NG, bool ASYM>
__device__ __forceinline__ void stage_qz(float (&out)[NTOK][4], const Stage& w, const SzSlot<NG, ASYM>& sz,
                                         const uint4 (&xv)[NTOK][2][2], int g, int c) {
  uint32_t zp[NG][2];
#pragma unroll
  for (int gi = 0; gi < NG; ++gi) zero_pairs<T, NG, ASYM>(sz, gi, g, zp[gi]);
  float acc[2][NTOK][4];
  weight_mma<T, NTOK, false, NG>(acc, w, xv, g, c, zp);
  scale_acc<T, NTOK, NG, ASYM>(out, acc, sz, g);
}

}  // namespace
