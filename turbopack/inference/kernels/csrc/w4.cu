// W4A16 kernels that read the w4_t{16,64}x64 layouts as packed (docs/layouts.md):
//   turbopack_w4_decode   M <= 16 tokens, tensor-core GEMV (the decode step)
//   turbopack_w4_dequant  packed codes -> 16-bit W [NP, K_pad] (prefill: then one cuBLAS GEMM)
//
// Layout recap: one (TN x 64) tile of codes is TN rows x 32 bytes, contiguous; word j of a row
// holds k = 8j..8j+7 of the tile with element e in nibble (0,4,1,5,2,6,3,7)[e], so
// (w >> 4i) & 0x000F000F holds elements 2i, 2i+1 in its two 16-bit halves. OR-ing the 16-bit
// magic M (bf16 0x4300 = 128.0, fp16 0x6400 = 1024.0; q <= 15 fits the mantissa of both) makes
// the 16-bit pair (M + q_2i, M + q_2i+1) with one lop3: the tensor cores multiply (M + q)
// directly and the group epilogue removes M + z (z: the uint8 zero point; sym: 8).
//
// Decode: a CTA is 4 warps, one 16-row MMA fragment (mma.sync m16n8k16, W as A) each, over the
// CTA's K range (split-K across blockIdx.y). Measured on the H200 (2026-12-03, ncu): the first
// version (one group of 32 B per thread in flight) read DRAM at 39%; a second, with a cp.async
// ring but an MMA against all-ones for sum(x) and a per-group fp32 epilogue, at 16%: ~385
// instructions per 1 KiB stage and one long chain of dependent MMAs per warp (12.7 cycles per
// issued instruction). This version: each warp streams its weights, scales and zeros through a
// STAGES-deep cp.async ring in shared memory (private to the warp: every lane reads back what it
// copied, except the scales, behind a __syncwarp); activations come from L1 (all warps of an SM
// read the same x); addressing is hoisted out of the loop; and the per-tile accumulators make four
// short independent MMA chains. A third version put the contract's 16-bit weights in the A
// registers (HSUB2 + HMUL2 per register): exact, but two more instructions per two weights, and
// at 48% of bandwidth ncu showed the SM issue-bound (50% compute throughput at 13 warps/SM); the
// raw (M + q) operand plus one MMA against all-ones per step issues fewer instructions.
// K order inside the MMA: thread c of a quad takes bytes 8c..8c+7 of its two rows in each tile
// (k = 16c..16c+15 of the tile), pair p of those 16 k is word p>>2 shifted by 4(p&3), and its
// activations are the 16-bit pair at the same k, 32-bit word p of the thread's 32 bytes of x. A
// and B are permuted alike, so the MMA's sum over k is unchanged, and one MMA never mixes the two
// 64-wide tiles of a 128-wide stage (group 64 changes scale between them).
//
// Numerics: acc = sum (M + q) x and xs = sum x per tile (fp32, exact products), then per group
// y += s * acc - s * (M + z) * xs: exact (q - z) * s weights in fp32, which differs from the
// contract's 16-bit-rounded weight by that rounding only (~1e-3 relative).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace {

constexpr int kWarps = 4;   // 4 x 16 rows = one 64-row sm90 tile per CTA
constexpr int kStageK = 128;

template <typename T> struct Half16;
template <> struct Half16<__nv_bfloat16> {
  static constexpr uint32_t kMagic = 0x43004300u, kOnes = 0x3F803F80u;
  static constexpr float kBase = 128.f;
  static __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_f(float v) { return __float2bfloat16(v); }
  static __device__ __forceinline__ uint32_t pack(float a, float b) {
    __nv_bfloat162 p = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&p);
  }
  static __device__ __forceinline__ float2 unpack(uint32_t v) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&v));
  }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <> struct Half16<__half> {
  static constexpr uint32_t kMagic = 0x64006400u, kOnes = 0x3C003C00u;
  static constexpr float kBase = 1024.f;
  static __device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_f(float v) { return __float2half_rn(v); }
  static __device__ __forceinline__ uint32_t pack(float a, float b) {
    __half2 p = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&p);
  }
  static __device__ __forceinline__ float2 unpack(uint32_t v) { return __half22float2(*reinterpret_cast<__half2*>(&v)); }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// (w & 0x000F000F) | magic in one lop3 (0xea = (a & b) | c)
template <uint32_t kMagic>
__device__ __forceinline__ uint32_t lop3_magic(uint32_t w) {
  uint32_t r;
  asm volatile("lop3.b32 %0, %1, %2, %3, 0xea;\n" : "=r"(r) : "r"(w), "n"(0x000F000F), "n"(kMagic));
  return r;
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool fill) {
  // src-size 0 zero-fills the 16 bytes and reads nothing (tokens past M, rows past the packed N)
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(fill ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// One stage of one warp: 128 k of its 16 rows, weights as in global memory (two 512-byte tiles),
// then the scales and zero points of the stage's one or two groups.
template <typename T>
struct Stage {
  uint4 w[2][32];
  T s[2][16];
  uint8_t z[2][16];
};

struct Args {
  const void* x; const uint4* qw; const void* scales; const uint8_t* zeros; const void* bias; void* y;
  float* ws; int* counters;
  int M, N, NP, K, KT, KGP, TN, G, stride_xm, split_k;
};

// Output element i of token column t of this thread: row n0 + g + 8*(i/2), token 8t + 2c + (i&1).
// Split-K: every CTA adds its partial sums into the fp32 workspace and bumps its tile's counter;
// the CTA that completes the count stores y (+ bias) and leaves workspace and counter zeroed.
template <typename T, int NTOK>
__device__ void store_tile(const Args& a, const float (&out)[NTOK][4], int n0, int g, int c, bool active) {
  T* y = static_cast<T*>(a.y);
  const T* bias = static_cast<const T*>(a.bias);
  if (a.split_k > 1) {
    if (active) {
#pragma unroll
      for (int t = 0; t < NTOK; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int row = n0 + g + 8 * (i >> 1), tok = 8 * t + 2 * c + (i & 1);
          if (row < a.N && tok < a.M) atomicAdd(a.ws + (long long)tok * a.N + row, out[t][i]);
        }
    }
    __threadfence();
    __syncthreads();
    __shared__ int last;
    if (threadIdx.x == 0) last = atomicAdd(a.counters + blockIdx.x, 1) == a.split_k - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
  }
  if (active) {
#pragma unroll
    for (int t = 0; t < NTOK; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = n0 + g + 8 * (i >> 1), tok = 8 * t + 2 * c + (i & 1);
        if (row < a.N && tok < a.M) {
          float v = out[t][i];
          if (a.split_k > 1) v = atomicExch(a.ws + (long long)tok * a.N + row, 0.f);  // read and re-zero
          if (bias != nullptr) v += Half16<T>::to_f(bias[row]);
          y[(long long)tok * a.N + row] = Half16<T>::from_f(v);
        }
      }
  }
  if (a.split_k > 1 && threadIdx.x == 0) a.counters[blockIdx.x] = 0;
}

// cp.async of one stage: lane l copies 16-byte chunk l of each of the two tiles (the warp's 16 rows
// are 512 contiguous bytes per tile); lanes 0..3 the scales (8 rows each), lanes 8..9 the zeros.
template <typename T>
__device__ __forceinline__ void issue_stage(const Args& a, Stage<T>& st, const uint4* wsrc, long long tile_step,
                                            const T* ssrc, const uint8_t* zsrc, int grp, int ngroups, int lane) {
  const long long t0 = 2LL * grp * tile_step;
  cp_async16(&st.w[0][lane], wsrc + t0, true);
  cp_async16(&st.w[1][lane], wsrc + t0 + tile_step, true);
  if (lane < 2 * ngroups) {
    cp_async16(&st.s[lane >> 1][8 * (lane & 1)], ssrc + (long long)(grp * ngroups + (lane >> 1)) * a.TN, true);
  } else if (lane >= 8 && lane < 8 + ngroups && zsrc != nullptr) {
    cp_async16(&st.z[lane - 8][0], zsrc + (long long)(grp * ngroups + lane - 8) * a.TN, true);
  }
}

template <typename T, int NTOK, int STAGES>
__global__ void __launch_bounds__(kWarps * 32) w4_decode_kernel(const Args a) {
  using H = Half16<T>;
  extern __shared__ uint4 smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  Stage<T>* ring = reinterpret_cast<Stage<T>*>(smem) + warp * STAGES;
  const int n0 = blockIdx.x * (kWarps * 16) + warp * 16;  // first row of this warp
  const bool active = n0 < a.NP;
  const int stages = a.K / kStageK;
  const int per = (stages + a.split_k - 1) / a.split_k;
  const int s_lo = blockIdx.y * per, s_hi = active ? min(stages, s_lo + per) : s_lo;
  const int tn = n0 / a.TN, r0 = n0 % a.TN;
  const int ngroups = kStageK / a.G;
  // per-lane sources, hoisted: tile (tn, 0) of the warp's rows; scales/zeros of group 0
  const long long tile_step = (long long)a.TN * 2;  // uint4 per 64-wide tile
  const uint4* wsrc = a.qw + ((long long)tn * a.KT * a.TN + r0) * 2 + lane;
  const T* ssrc = static_cast<const T*>(a.scales) + (long long)tn * a.KGP * a.TN + r0 + 8 * (lane & 1);
  const uint8_t* zsrc = a.zeros != nullptr ? a.zeros + (long long)tn * a.KGP * a.TN + r0 : nullptr;
  const T* x = static_cast<const T*>(a.x);
  const uint4* xsrc[NTOK];
#pragma unroll
  for (int t = 0; t < NTOK; ++t) {
    const int tok = 8 * t + g;
    xsrc[t] = tok < a.M ? reinterpret_cast<const uint4*>(x + (long long)tok * a.stride_xm + 16 * c) : nullptr;
  }

  const uint32_t ones[4] = {H::kOnes, H::kOnes, H::kOnes, H::kOnes};
  float out[NTOK][4];
#pragma unroll
  for (int t = 0; t < NTOK; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) out[t][i] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s_lo + s < s_hi) issue_stage<T>(a, ring[s], wsrc, tile_step, ssrc, zsrc, s_lo + s, ngroups, lane);
    cp_async_commit();
  }
  for (int grp = s_lo, it = 0; grp < s_hi; ++grp, ++it) {
    // activations: 32 bytes per tile of this thread's token, from L1 (every warp of the SM reads them)
    uint4 xv[NTOK][2][2];
#pragma unroll
    for (int t = 0; t < NTOK; ++t)
#pragma unroll
      for (int j = 0; j < 4; ++j)
        xv[t][j >> 1][j & 1] = xsrc[t] != nullptr ? __ldg(xsrc[t] + grp * (kStageK / 8) + 8 * (j >> 1) + (j & 1))
                                                  : make_uint4(0, 0, 0, 0);
    cp_async_wait<STAGES - 2>();
    __syncwarp();  // the scales another lane copied are visible; every lane is done with slot it-1
    const int next = grp + STAGES - 1;
    if (next < s_hi) issue_stage<T>(a, ring[(it + STAGES - 1) % STAGES], wsrc, tile_step, ssrc, zsrc, next, ngroups, lane);
    cp_async_commit();
    const Stage<T>& st = ring[it % STAGES];
    float acc[2][NTOK][4], xs[2][NTOK][4];  // per tile: sum (M + q) x and sum x, four independent MMA chains
#pragma unroll
    for (int tile = 0; tile < 2; ++tile) {
#pragma unroll
      for (int t = 0; t < NTOK; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[tile][t][i] = xs[tile][t][i] = 0.f;
      const uint2 wl = reinterpret_cast<const uint2*>(&st.w[tile][0])[g * 4 + c];        // row g, bytes 8c..
      const uint2 wh = reinterpret_cast<const uint2*>(&st.w[tile][0])[(g + 8) * 4 + c];  // row g + 8
#pragma unroll
      for (int step = 0; step < 4; ++step) {
        // pairs 2*step and 2*step+1: word step>>1, shifts 8*(step&1) and +4
        const uint32_t lo = (step >> 1) ? wl.y : wl.x, hi = (step >> 1) ? wh.y : wh.x;
        const int sh = 8 * (step & 1);
        const uint32_t af[4] = {lop3_magic<H::kMagic>(lo >> sh), lop3_magic<H::kMagic>(hi >> sh),
                                lop3_magic<H::kMagic>(lo >> (sh + 4)), lop3_magic<H::kMagic>(hi >> (sh + 4))};
#pragma unroll
        for (int t = 0; t < NTOK; ++t) {
          const uint4& q = xv[t][tile][step >> 1];
          const uint32_t b0 = (step & 1) ? q.z : q.x, b1 = (step & 1) ? q.w : q.y;
          H::mma(acc[tile][t], af, b0, b1);
          H::mma(xs[tile][t], ones, b0, b1);
        }
      }
    }
    // epilogue of the stage's group(s): out += s * (acc - (M + z) * sum x), rows g and g + 8
#pragma unroll
    for (int tile = 0; tile < 2; ++tile) {
      const int gi = ngroups == 2 ? tile : 0;
      const float sl = H::to_f(st.s[gi][g]), sh_ = H::to_f(st.s[gi][g + 8]);
      const float ol = sl * (H::kBase + (a.zeros != nullptr ? static_cast<float>(st.z[gi][g]) : 8.f));
      const float oh = sh_ * (H::kBase + (a.zeros != nullptr ? static_cast<float>(st.z[gi][g + 8]) : 8.f));
#pragma unroll
      for (int t = 0; t < NTOK; ++t) {
        out[t][0] = fmaf(sl, acc[tile][t][0], fmaf(-ol, xs[tile][t][0], out[t][0]));
        out[t][1] = fmaf(sl, acc[tile][t][1], fmaf(-ol, xs[tile][t][1], out[t][1]));
        out[t][2] = fmaf(sh_, acc[tile][t][2], fmaf(-oh, xs[tile][t][2], out[t][2]));
        out[t][3] = fmaf(sh_, acc[tile][t][3], fmaf(-oh, xs[tile][t][3], out[t][3]));
      }
    }
  }
  cp_async_wait<0>();
  store_tile<T, NTOK>(a, out, n0, g, c, active);
}

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

template <typename T, int NTOK, int STAGES>
int launch_decode(const Args& a, cudaStream_t s) {
  const int smem = kWarps * STAGES * static_cast<int>(sizeof(Stage<T>));
  static bool raised = false;  // one attribute call per instantiation (not a per-launch cost)
  if (!raised) {
    cudaError_t e = cudaFuncSetAttribute(w4_decode_kernel<T, NTOK, STAGES>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return static_cast<int>(e);
    raised = true;
  }
  const dim3 grid((a.NP + kWarps * 16 - 1) / (kWarps * 16), a.split_k), block(kWarps * 32);
  w4_decode_kernel<T, NTOK, STAGES><<<grid, block, smem, s>>>(a);
  return static_cast<int>(cudaGetLastError());
}

template <typename T, int NTOK>
int by_stages(const Args& a, int stages, cudaStream_t s) {
  switch (stages) {
    case 2: return launch_decode<T, NTOK, 2>(a, s);
    case 3: return launch_decode<T, NTOK, 3>(a, s);
    case 4: return launch_decode<T, NTOK, 4>(a, s);
    case 6: return launch_decode<T, NTOK, 6>(a, s);
    case 8: return launch_decode<T, NTOK, 8>(a, s);
    default: return -2;
  }
}

template <typename T>
int by_tokens(const Args& a, int stages, cudaStream_t s) {
  return a.M <= 8 ? by_stages<T, 1>(a, stages, s) : by_stages<T, 2>(a, stages, s);
}

}  // namespace

// dtype: 0 = bf16, 1 = fp16 (activations, scales, bias and y alike). Returns 0 or an error code:
// -1 bad arguments, -2 unsupported STAGES, else the CUDA error.
extern "C" int turbopack_w4_decode(const void* x, const void* qw, const void* scales, const void* zeros,
                                   const void* bias, void* y, void* ws, void* counters, int M, int N, int NP,
                                   int K, int KT, int KGP, int TN, int G, int stride_xm, int split_k, int stages,
                                   int dtype, void* stream) {
  if (M < 1 || M > 16 || K % kStageK != 0 || (G != 64 && G != 128) || TN % 16 != 0 || NP % 16 != 0 ||
      stride_xm % 8 != 0 || split_k < 1 || (dtype != 0 && dtype != 1))
    return -1;
  const Args a{x, static_cast<const uint4*>(qw), scales, static_cast<const uint8_t*>(zeros), bias, y,
               static_cast<float*>(ws), static_cast<int*>(counters), M, N, NP, K, KT, KGP, TN, G, stride_xm, split_k};
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  return dtype == 0 ? by_tokens<__nv_bfloat16>(a, stages, s) : by_tokens<__half>(a, stages, s);
}

extern "C" int turbopack_w4_dequant(const void* qw, const void* scales, const void* zeros, void* w, int NT, int KT,
                                    int KGP, int TN, int G, int dtype, void* stream) {
  if ((G != 32 && G != 64 && G != 128) || TN % 16 != 0 || (dtype != 0 && dtype != 1)) return -1;
  const long long halves = (long long)NT * KT * TN * 2;
  const int block = 256;
  const unsigned grid = static_cast<unsigned>((halves + block - 1) / block);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const uint4* q = static_cast<const uint4*>(qw);
  const uint8_t* z = static_cast<const uint8_t*>(zeros);
  if (dtype == 0)
    w4_dequant_kernel<__nv_bfloat16><<<grid, block, 0, s>>>(q, static_cast<const __nv_bfloat16*>(scales), z,
                                                            static_cast<__nv_bfloat16*>(w), NT, KT, KGP, TN, G, halves);
  else
    w4_dequant_kernel<__half><<<grid, block, 0, s>>>(q, static_cast<const __half*>(scales), z, static_cast<__half*>(w),
                                                     NT, KT, KGP, TN, G, halves);
  return static_cast<int>(cudaGetLastError());
}
