// The W4 dequantizer of w4.cu (turbopack_w4_dequant: packed codes -> 16-bit W for prefill's one
// cuBLAS GEMM), in the layout and magic-number order described at the top of w4.cu; a header of its
// own to keep w4.cu under the module size. Anonymous namespace, as common.cuh.
#pragma once
#include "common.cuh"

namespace {

// Dequantize: one thread per 16-byte half row of a tile (32 codes), in memory order, so the reads
// are fully coalesced; it writes those 32 weights (64 bytes) of row n = tn*TN + r of W [NP, K_pad].
// Each value is the contract's: round_T(fp32 (q - z) * s), exact before the one rounding.
template <typename T>
__global__ void w4_dequant_kernel(const uint4* __restrict__ qw, const T* __restrict__ scales,
                                  const uint8_t* __restrict__ zeros, T* __restrict__ w, int NT, int KT, int KGP,
                                  int TN, int G, long long halves) {
  using H = Half16<T>;
  const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= halves) return;
  const int h = idx & 1;
  const long long rowi = idx >> 1;  // ((tn*KT + tk)*TN + r)
  const int r = rowi % TN;
  const long long tt = rowi / TN;
  const int tk = tt % KT, tn = tt / KT;
  const int k0 = tk * 64 + 32 * h;
  const long long sidx = ((long long)tn * KGP + k0 / G) * TN + r;
  const float s = H::to_f(scales[sidx]);
  const float base = H::kBase + (zeros != nullptr ? static_cast<float>(zeros[sidx]) : 8.f);
  const uint4 q = __ldg(qw + idx);
  const uint32_t words[4] = {q.x, q.y, q.z, q.w};
  uint32_t o[16];
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 v = H::unpack(lop3_magic<H::kMagic>(words[j] >> (4 * i)));  // (M + q_2i, M + q_2i+1)
      o[4 * j + i] = H::pack((v.x - base) * s, (v.y - base) * s);
    }
  uint4* dst = reinterpret_cast<uint4*>(w + ((long long)tn * TN + r) * (KT * 64) + k0);
#pragma unroll
  for (int v = 0; v < 4; ++v) dst[v] = make_uint4(o[4 * v], o[4 * v + 1], o[4 * v + 2], o[4 * v + 3]);
}

}  // namespace
