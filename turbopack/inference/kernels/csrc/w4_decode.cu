// W4A16 decode (M <= 16 tokens) on tensor cores, reading the w4_t{16,64}x64 layout as packed.
//
// One warp computes 16 weight rows x all its tokens over its K range with mma.sync m16n8k16
// (bf16 in, fp32 accumulate), W as the A operand. The layout's interleave does the register
// shuffling: (word >> 4i) & 0x000F000F holds elements 2i, 2i+1 in its two 16-bit halves, and one
// lop3 with the bf16 magic 0x4300 (= 128.0) turns them into the bf16 pair (128 + q). No other
// conversion: the MMA multiplies (128 + q) directly, and per quantization group (G = 128) the
// epilogue of the group applies  y += s * (acc - (128 + z) * sum_k x)  with sum_k x from one more
// MMA against an all-ones A. The MMA's K order is permuted per thread (thread c of a quad owns the
// 32 consecutive k of one 16-byte load per row; the k of A and of x are permuted identically), so
// each thread reads 16 contiguous bytes per row and 64 contiguous bytes of x.
//
// Numerics: exact (q - z) * s per weight in fp32 (no 16-bit rounding of w), fp32 accumulation;
// it differs from the w4 contract's act(fma(q, s, -(z*s))) = act((q - z)*s) by that rounding only
// (~1e-3 relative). The zero points z are read as stored (layout v2: uint8 codes, tiled like the
// scales); symmetric weights pass no zeros and use z = 8.
// Split-K: fp32 atomics into a zeroed workspace plus a per-tile counter; the last CTA of a tile
// applies bias, stores bf16 and zeroes the workspace and counter again (no extra launch).
#include <cuda_bf16.h>
#include <stdint.h>

namespace {

constexpr int kWarps = 4;            // 4 x 16 rows = one 64-row tile per CTA
constexpr int kChunk = 128;          // k per step = one quantization group

__device__ __forceinline__ uint32_t lop3_magic(uint32_t w) {
  uint32_t r;
  // (w & 0x000F000F) | 0x43004300  -> bf16 pair (128 + q_lo, 128 + q_hi)
  asm volatile("lop3.b32 %0, %1, %2, %3, 0xea;\n" : "=r"(r) : "r"(w), "n"(0x000F000F), "n"(0x43004300));
  return r;
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// pair p (0..15) of a thread's 4 words: word p/4, shift 4*(p%4)
__device__ __forceinline__ uint32_t pair_of(const uint4& w, int p) {
  const uint32_t word = (p >> 2) == 0 ? w.x : (p >> 2) == 1 ? w.y : (p >> 2) == 2 ? w.z : w.w;
  return lop3_magic(word >> (4 * (p & 3)));
}

template <int NTOK>  // 8-token MMA columns: 1 (M <= 8) or 2 (M <= 16)
__global__ void __launch_bounds__(kWarps * 32)
w4_decode_kernel(const __nv_bfloat16* __restrict__ x, const uint4* __restrict__ qw,
                 const __nv_bfloat16* __restrict__ scales, const uint8_t* __restrict__ zeros,
                 const __nv_bfloat16* __restrict__ bias, __nv_bfloat16* __restrict__ y,
                 float* __restrict__ ws, int* __restrict__ counters,
                 int M, int N, int NP, int K, int KT, int KGP, int TN, int stride_xm, int split_k) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  const int n0 = blockIdx.x * (kWarps * 16) + warp * 16;      // first row of this warp
  const bool active = n0 < NP;
  const int groups = K / kChunk;
  const int per = (groups + split_k - 1) / split_k;
  const int g_lo = blockIdx.y * per, g_hi = min(groups, g_lo + per);

  // this thread's two rows and their 16-byte column within a 128-wide chunk (two 64-wide tiles)
  const int tn = n0 / TN, r0 = n0 % TN + g;
  // uint4 index of (tile row r, tile tk, words 4*(c&1)..): (((tn*KT + tk)*TN + r)*8 + 4*(c&1)) / 4
  const long long row_lo = ((long long)tn * KT * TN + r0) * 2 + (c & 1);
  const long long row_hi = row_lo + 8 * 2;
  const int tk_off = c >> 1;

  float acc[NTOK][4], xs[NTOK][4], out[NTOK][4];
#pragma unroll
  for (int t = 0; t < NTOK; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) out[t][i] = 0.f;
  const uint32_t ones[4] = {0x3F803F80u, 0x3F803F80u, 0x3F803F80u, 0x3F803F80u};

  // software pipeline: group grp+1's weights and activations load while grp computes
  uint4 w_lo = make_uint4(0, 0, 0, 0), w_hi = w_lo, xn[NTOK][4];
  auto load = [&](int grp) {
    if (active) {
      const long long tile = (long long)(2 * grp + tk_off) * TN * 2;
      w_lo = __ldg(qw + row_lo + tile);
      w_hi = __ldg(qw + row_hi + tile);
    }
#pragma unroll
    for (int t = 0; t < NTOK; ++t) {
      const int tok = 8 * t + g;  // x: 32 consecutive k of token tok from grp*128 + 32*c
      const uint4* xp = reinterpret_cast<const uint4*>(x + (long long)tok * stride_xm + grp * kChunk + 32 * c);
#pragma unroll
      for (int j = 0; j < 4; ++j) xn[t][j] = tok < M ? __ldg(xp + j) : make_uint4(0, 0, 0, 0);
    }
  };
  if (g_lo < g_hi) load(g_lo);
  for (int grp = g_lo; grp < g_hi; ++grp) {
    const uint4 cur_lo = w_lo, cur_hi = w_hi;
    uint4 xv[NTOK][4];
#pragma unroll
    for (int t = 0; t < NTOK; ++t) {
#pragma unroll
      for (int j = 0; j < 4; ++j) xv[t][j] = xn[t][j];
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[t][i] = xs[t][i] = 0.f;
    }
    if (grp + 1 < g_hi) load(grp + 1);
#pragma unroll
    for (int s = 0; s < 8; ++s) {
      const uint32_t a[4] = {pair_of(cur_lo, 2 * s), pair_of(cur_hi, 2 * s), pair_of(cur_lo, 2 * s + 1),
                             pair_of(cur_hi, 2 * s + 1)};
#pragma unroll
      for (int t = 0; t < NTOK; ++t) {
        const uint4& xq = xv[t][s >> 1];
        const uint32_t b0 = (s & 1) ? xq.z : xq.x, b1 = (s & 1) ? xq.w : xq.y;
        mma_bf16(acc[t], a, b0, b1);
        mma_bf16(xs[t], ones, b0, b1);
      }
    }
    if (active) {  // group epilogue: out += s * (acc - (128 + z) * sum x), rows g and g+8
      const long long sidx = ((long long)tn * KGP + grp) * TN + r0;
      const float s_lo = __bfloat162float(scales[sidx]), s_hi = __bfloat162float(scales[sidx + 8]);
      float z_lo = 8.f, z_hi = 8.f;
      if (zeros != nullptr) {  // uint8 zero points, same index as the scales
        z_lo = static_cast<float>(__ldg(zeros + sidx));
        z_hi = static_cast<float>(__ldg(zeros + sidx + 8));
      }
#pragma unroll
      for (int t = 0; t < NTOK; ++t) {
        out[t][0] += s_lo * (acc[t][0] - (128.f + z_lo) * xs[t][0]);
        out[t][1] += s_lo * (acc[t][1] - (128.f + z_lo) * xs[t][1]);
        out[t][2] += s_hi * (acc[t][2] - (128.f + z_hi) * xs[t][2]);
        out[t][3] += s_hi * (acc[t][3] - (128.f + z_hi) * xs[t][3]);
      }
    }
  }

  // fragment element i: row n0 + g + 8*(i/2), token 8*t + 2*c + (i&1)
  if (split_k == 1) {
    if (!active) return;
#pragma unroll
    for (int t = 0; t < NTOK; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = n0 + g + 8 * (i >> 1), tok = 8 * t + 2 * c + (i & 1);
        if (row < N && tok < M) {
          const float b = bias != nullptr ? __bfloat162float(bias[row]) : 0.f;
          y[(long long)tok * N + row] = __float2bfloat16(out[t][i] + b);
        }
      }
    return;
  }
  if (active) {
#pragma unroll
    for (int t = 0; t < NTOK; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = n0 + g + 8 * (i >> 1), tok = 8 * t + 2 * c + (i & 1);
        if (row < N && tok < M) atomicAdd(ws + (long long)tok * N + row, out[t][i]);
      }
  }
  __threadfence();
  __syncthreads();
  __shared__ int last;
  if (threadIdx.x == 0) {
    last = atomicAdd(counters + blockIdx.x, 1) == split_k - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  if (active) {
#pragma unroll
    for (int t = 0; t < NTOK; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = n0 + g + 8 * (i >> 1), tok = 8 * t + 2 * c + (i & 1);
        if (row < N && tok < M) {
          const float v = atomicExch(ws + (long long)tok * N + row, 0.f);  // read and re-zero
          const float b = bias != nullptr ? __bfloat162float(bias[row]) : 0.f;
          y[(long long)tok * N + row] = __float2bfloat16(v + b);
        }
      }
  }
  if (threadIdx.x == 0) counters[blockIdx.x] = 0;
}

}  // namespace

extern "C" int turbopack_w4_decode(const void* x, const void* qw, const void* scales, const void* zeros,
                                   const void* bias, void* y, void* ws, void* counters, int M, int N, int NP,
                                   int K, int KT, int KGP, int TN, int stride_xm, int split_k, void* stream) {
  if (M < 1 || M > 16 || K % kChunk != 0 || TN % 16 != 0 || NP % 16 != 0 || stride_xm % 8 != 0) return 1;
  const dim3 grid((NP + kWarps * 16 - 1) / (kWarps * 16), split_k), block(kWarps * 32);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  auto args = [&](auto kern) {
    kern<<<grid, block, 0, s>>>(static_cast<const __nv_bfloat16*>(x), static_cast<const uint4*>(qw),
                                static_cast<const __nv_bfloat16*>(scales), static_cast<const uint8_t*>(zeros),
                                static_cast<const __nv_bfloat16*>(bias), static_cast<__nv_bfloat16*>(y),
                                static_cast<float*>(ws), static_cast<int*>(counters), M, N, NP, K, KT, KGP, TN,
                                stride_xm, split_k);
  };
  if (M <= 8) args(w4_decode_kernel<1>);
  else args(w4_decode_kernel<2>);
  return static_cast<int>(cudaGetLastError());
}
