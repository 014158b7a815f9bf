// Weight-only NVFP4 decode: y [M, N] = fp32(sum_k x[m, k] * e2m1(q[n, k]) * s[n, k / 16]) * (1 / gs)
// (+ bias) for M <= 16 tokens, reading nvfp4_t16x64 exactly as packed (docs/layouts.md): codes uint8
// [NT, KT, 16, 32] (tile row r of tile (tn, tk): bytes of k = 64 tk .. 64 tk + 63, low nibble = even
// k), e4m3 block scales [NT, KT, 16, 4] (byte i of a tile row: block i of its 64 k), gs fp32 [1].
//   turbopack_fp4_decode
//
// Structure as in w8.cu: a warp owns 16 rows (one layout tile row block tn) and walks K in stages of
// 128 k = tiles 2st and 2st + 1, which lie next to each other (KT is the inner dimension): thread
// (g, c) of the MMA copies, with cp.async into its own ring slots, 16 code bytes of rows g and g + 8
// (tile 2st + c / 2, bytes 16 (c % 2) ..: k = 128 st + 32c .. 32c + 31 of the stage, contiguous) and
// the two rows' 4-byte scale words, and reads back only what it copied (no barrier), a STAGES-deep
// ring per warp. A stage is 1 KiB of codes + 128 B of scales per warp.
//
// K order inside the MMA (m16n8k16, W as A, x as B): word j (0..3) of a thread's 16 bytes holds
// k = 32c + 8j + e in nibble e. Nibbles e and e + 4 sit 16 bits apart, so one shift places both
// under the two halves of a 16-bit pair: pair (0, 4), (1, 5) are A's a0/a2 of step 2j (rows g; a1/a3
// rows g + 8, same k), (2, 6), (3, 7) those of step 2j + 1. B is x at the same k: words (x0, x1) ..
// (x6, x7) of the thread's 16 bytes of x, regrouped by prmt into (x0, x4), (x1, x5), (x2, x6),
// (x3, x7) (one prmt per x register: cheaper than regrouping the twice as many weight registers).
//
// Decode, exact, in registers (Fp4 below): a code's sign and 3 magnitude bits moved under a 16-bit
// float's sign and exponent/mantissa boundary read as e2m1(c) * 2^-14 (fp16: bits 9..11 + 15) or
// e2m1(c) * 2^-126 (bf16: bits 6..8 + 15); code 1 (0.5) lands on a subnormal of either type, which
// the half2 multiply keeps (no flush for 16-bit ops). The block scale, decoded like w8.cu's e4m3
// (byte under the sign: s * 2^-8 fp16 / s * 2^-120 bf16, subnormal scales included) and rescaled by
// exact powers of two to s * 2^7 (fp16) / s * 2^119 (bf16), multiplies each pair once (HMUL2):
// w16 = e2m1 * s * 2^-7 exactly, since e2m1 has 2 significant bits and e4m3 4, so the product has at
// most 6 (fp16 holds 11, bf16 8), and |e2m1 * s| lies in [2^-10, 6 * 480], so w16 in [2^-17, 22.5]:
// a bf16 normal, an fp16 normal or (below 2^-14) subnormal on fp16's 2^-24 grid, never rounded.
// Accumulation in fp32, then y = sum * (2^7 * (1 / gs)): 2^7 * (1 / gs) is exact, so that is
// fp32(sum * 2^7) * fp32(1 / gs), the layout's contract (1 / gs correctly rounded, as torch's).
// No byte value decodes to Inf/NaN (e4m3's NaN bytes read as 480), so a stale or unwritten ring slot
// times the zeros that x holds past K adds exactly 0.
#include "common.cuh"

namespace {

constexpr int kWarps = 4;     // 4 x 16 rows per CTA
constexpr int kStageK = 128;  // one stage: two 64-wide layout tiles
constexpr int kTileCodeBytes = 16 * 32, kTileScaleBytes = 16 * 4;

template <typename T> struct Fp4;
// pair<E>(w): nibbles E (low half) and E + 4 (high half) of w as a 16-bit pair of e2m1 * 2^-14;
// scale(sw, sel): the scale byte that sel picks from sw, s * 2^7 in both halves.
template <> struct Fp4<__half> {
  template <int E> static __device__ __forceinline__ uint32_t pair(uint32_t w) {
    uint32_t mag;  // magnitude bits 4E..4E+2 -> 9..11 (sign bit 4E+3 -> 15 below)
    if constexpr (E < 3) mag = w << (9 - 4 * E);
    else mag = w >> 3;
    return (mag & 0x0E000E00u) | ((w << (12 - 4 * E)) & 0x80008000u);
  }
  static __device__ __forceinline__ uint32_t scale(uint32_t sw, uint32_t sel) {
    // prmt: byte and its sign-replicate in each half; << 7 and the mask: sign 15, bits 7..13 = s * 2^-8
    return Half16<__half>::mul2((prmt(sw, 0u, sel) << 7) & 0xBF80BF80u, 0x78007800u);  // * 2^15
  }
};
template <> struct Fp4<__nv_bfloat16> {
  template <int E> static __device__ __forceinline__ uint32_t pair(uint32_t w) {
    uint32_t mag;  // magnitude bits 4E..4E+2 -> 6..8
    if constexpr (E < 2) mag = w << (6 - 4 * E);
    else mag = w >> (4 * E - 6);
    return (mag & 0x01C001C0u) | ((w << (12 - 4 * E)) & 0x80008000u);
  }
  static __device__ __forceinline__ uint32_t scale(uint32_t sw, uint32_t sel) {
    // << 4 and the mask: sign 15, bits 4..10 = s * 2^-120 (a subnormal for subnormal e4m3); bf16's
    // largest power of two is 2^127, so two exact multiplies: * 2^127 * 2^112 = s * 2^119 (<= 1.88 * 2^127)
    const uint32_t s = (prmt(sw, 0u, sel) << 4) & 0x87F087F0u;
    return Half16<__nv_bfloat16>::mul2(Half16<__nv_bfloat16>::mul2(s, 0x7F007F00u), 0x77807780u);
  }
};
constexpr float kPost = 128.f;  // w16 = e2m1 * s * 2^-7 (both types)
template <bool B> struct Flag { static constexpr bool value = B; };  // the stage body's TAIL, as a type

// common.cuh's wait plus a memory clobber: the ring's loads below it stay below it
template <int N>
__device__ __forceinline__ void ring_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

struct Stage {
  uint4 w[2][32];      // [row g | row g + 8][lane]: 32 codes each
  uint32_t s[2][32];   // [row g | row g + 8][lane]: that tile row's four e4m3 scales
};

struct Args {
  Out o;
  const void* x; const uint8_t* qw; const uint8_t* sc; const float* gs;
  int NP, K, KT, stride_xm;
};

__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(d), "l"(src));
}

// One stage's copies of this thread; the pointers advance by two tiles (no 64-bit multiply per stage).
__device__ __forceinline__ void issue_stage(Stage& st, const uint8_t*& wsrc, const uint8_t*& ssrc, int lane) {
  cp_async16(&st.w[0][lane], wsrc);
  cp_async16(&st.w[1][lane], wsrc + 8 * 32);  // row g + 8: 8 tile rows of 32 bytes on
  cp_async4(&st.s[0][lane], ssrc);
  cp_async4(&st.s[1][lane], ssrc + 8 * 4);
  wsrc += 2 * kTileCodeBytes;
  ssrc += 2 * kTileScaleBytes;
}

// x of tokens 8t + g at k0 .. k0 + 31 of this thread (four 8-wide chunks); chunk j is zero past K
// (TAIL: the stage that holds K; K is a multiple of 16, so a chunk is all in or all out) or for a
// token past M.
template <int NTOK, bool TAIL>
__device__ __forceinline__ void load_x(uint4 (&xv)[NTOK][4], const uint4* (&xsrc)[NTOK], const bool (&has)[NTOK],
                                       int k0, int K) {
#pragma unroll
  for (int t = 0; t < NTOK; ++t) {
#pragma unroll
    for (int j = 0; j < 4; ++j)
      xv[t][j] = has[t] && (!TAIL || k0 + 8 * j < K) ? __ldg(xsrc[t] + j) : make_uint4(0, 0, 0, 0);
    xsrc[t] += kStageK / 8;
  }
}

// The stage's 8 MMA steps per token column: word j of rows g / g + 8 -> steps 2j (nibble pairs
// (0, 4), (1, 5)) and 2j + 1 ((2, 6), (3, 7)), against x regrouped alike; even / odd steps feed two
// accumulator chains. scl / sch: scale pairs of rows g / g + 8 for words 0-1 and 2-3 (one 16-block each).
template <typename T, int NTOK>
__device__ __forceinline__ void mma_stage(float (&acc)[2][NTOK][4], const uint4& wl, const uint4& wh,
                                          const uint32_t (&scl)[2], const uint32_t (&sch)[2],
                                          const uint4 (&xv)[NTOK][4]) {
  using H = Half16<T>;
  using C = Fp4<T>;
  const uint32_t lw[4] = {wl.x, wl.y, wl.z, wl.w}, hw[4] = {wh.x, wh.y, wh.z, wh.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint32_t sl = scl[j >> 1], sh = sch[j >> 1];
    const uint32_t a0[4] = {H::mul2(C::template pair<0>(lw[j]), sl), H::mul2(C::template pair<0>(hw[j]), sh),
                            H::mul2(C::template pair<1>(lw[j]), sl), H::mul2(C::template pair<1>(hw[j]), sh)};
    const uint32_t a1[4] = {H::mul2(C::template pair<2>(lw[j]), sl), H::mul2(C::template pair<2>(hw[j]), sh),
                            H::mul2(C::template pair<3>(lw[j]), sl), H::mul2(C::template pair<3>(hw[j]), sh)};
#pragma unroll
    for (int t = 0; t < NTOK; ++t) {
      const uint4& q = xv[t][j];  // (x0, x1), (x2, x3), (x4, x5), (x6, x7)
      H::mma(acc[0][t], a0, prmt(q.x, q.z, 0x5410), prmt(q.x, q.z, 0x7632));  // (x0, x4), (x1, x5)
      H::mma(acc[1][t], a1, prmt(q.y, q.w, 0x5410), prmt(q.y, q.w, 0x7632));  // (x2, x6), (x3, x7)
    }
  }
}

// Register cap as in w8.cu: 64 for one token column (8 CTAs of 4 warps per SM), none for two.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define TP_FP4_MIN_BLOCKS(NTOK) 1
#else
#define TP_FP4_MIN_BLOCKS(NTOK) ((NTOK) == 1 ? 8 : 1)
#endif

template <typename T, int NTOK, int STAGES>
__global__ void __launch_bounds__(kWarps * 32, TP_FP4_MIN_BLOCKS(NTOK)) fp4_decode_kernel(const Args a) {
  extern __shared__ uint4 smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  Stage* ring = reinterpret_cast<Stage*>(smem) + warp * STAGES;
  const int n0 = blockIdx.x * (kWarps * 16) + warp * 16;
  const bool active = n0 < a.NP;
  const int stages = (a.KT + 1) / 2;
  const int per = (stages + a.o.split_k - 1) / a.o.split_k;
  const int s_lo = blockIdx.y * per, s_hi = active ? min(stages, s_lo + per) : s_lo;
  const int s_full = min(s_hi, a.K / kStageK);                   // stages wholly below K: x unmasked
  const int s_iss = min(s_hi, (a.KT - (c >> 1) + 1) >> 1);      // stages where this thread's tile exists
  const long long tile = (long long)(n0 / 16) * a.KT + 2 * s_lo + (c >> 1);
  const uint8_t* wsrc = a.qw + tile * kTileCodeBytes + g * 32 + 16 * (c & 1);
  const uint8_t* ssrc = a.sc + tile * kTileScaleBytes + g * 4;
  // prmt selectors: scale byte 2 (c % 2) (words 0-1) and 2 (c % 2) + 1 (words 2-3) in both halves,
  // each half's high byte the byte's sign (selector nibble | 8)
  const uint32_t sel0 = (c & 1) ? 0xA2A2u : 0x8080u, sel1 = (c & 1) ? 0xB3B3u : 0x9191u;
  const uint4* xsrc[NTOK];
  bool has[NTOK];
#pragma unroll
  for (int t = 0; t < NTOK; ++t) {
    const int tok = 8 * t + g;
    has[t] = tok < a.o.M;
    xsrc[t] = reinterpret_cast<const uint4*>(static_cast<const T*>(a.x) + (long long)(has[t] ? tok : 0) * a.stride_xm +
                                             s_lo * kStageK + 32 * c);
  }
  float acc[2][NTOK][4];
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int t = 0; t < NTOK; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[h][t][i] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s_lo + s < s_iss) issue_stage(ring[s], wsrc, ssrc, lane);
    cp_async_commit();
  }
  pdl_wait();  // only weights and scales are read before it (common.cuh)
  int rd = 0, wr = STAGES - 1;
  auto step = [&](int st, auto tail) {
    uint4 xv[NTOK][4];
    load_x<NTOK, decltype(tail)::value>(xv, xsrc, has, st * kStageK + 32 * c, a.K);
    ring_wait<STAGES - 2>();
    if (st + STAGES - 1 < s_iss) issue_stage(ring[wr], wsrc, ssrc, lane);
    cp_async_commit();
    wr = wr + 1 == STAGES ? 0 : wr + 1;
    const Stage& cur = ring[rd];
    rd = rd + 1 == STAGES ? 0 : rd + 1;
    const uint32_t ls = cur.s[0][lane], hs = cur.s[1][lane];  // this thread's own copies
    const uint32_t scl[2] = {Fp4<T>::scale(ls, sel0), Fp4<T>::scale(ls, sel1)};
    const uint32_t sch[2] = {Fp4<T>::scale(hs, sel0), Fp4<T>::scale(hs, sel1)};
    mma_stage<T, NTOK>(acc, cur.w[0][lane], cur.w[1][lane], scl, sch, xv);
  };
  int st = s_lo;
  for (; st < s_full; ++st) step(st, Flag<false>{});
  if (st < s_hi) step(st, Flag<true>{});  // the one stage that holds K (K_pad - K < 64 < 128)
  ring_wait<0>();
  const float post = kPost * __frcp_rn(__ldg(a.gs));
  float out[NTOK][4];
#pragma unroll
  for (int t = 0; t < NTOK; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) out[t][i] = (acc[0][t][i] + acc[1][t][i]) * post;
  store_tile<T, NTOK>(a.o, out, n0, g, c, active);
}

template <typename T, int NTOK, int STAGES>
int launch(const Args& a, cudaStream_t s) {
  auto kern = fp4_decode_kernel<T, NTOK, STAGES>;
  const int smem = kWarps * STAGES * static_cast<int>(sizeof(Stage));
  static bool raised = false;  // one attribute call per instantiation (not a per-launch cost)
  if (!raised) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return static_cast<int>(e);
    raised = true;
  }
  const dim3 grid((a.NP + kWarps * 16 - 1) / (kWarps * 16), a.o.split_k), block(kWarps * 32);
  return static_cast<int>(launch_kernel(kern, grid, block, smem, s, a));
}

template <typename T, int NTOK>
int by_stages(const Args& a, int stages, cudaStream_t s) {
  switch (stages) {
    case 3: return launch<T, NTOK, 3>(a, s);
    case 4: return launch<T, NTOK, 4>(a, s);
    case 6: return launch<T, NTOK, 6>(a, s);
    default: return -2;
  }
}

template <typename T>
int by_tokens(const Args& a, int stages, cudaStream_t s) {
  return a.o.M <= 8 ? by_stages<T, 1>(a, stages, s) : by_stages<T, 2>(a, stages, s);
}

}  // namespace

// qw / scales: nvfp4_t16x64's qweight [NP/16, KT, 16, 32] and scales [NP/16, KT, 16, 4], gs its
// global_scale (fp32 [1], on the device); dtype: 0 = bf16, 1 = fp16 (x, bias and y alike). Returns 0,
// -1 bad arguments, -2 unsupported STAGES, else the CUDA error.
extern "C" int turbopack_fp4_decode(const void* x, const void* qw, const void* scales, const void* gs,
                                    const void* bias, void* y, void* ws, void* counters, int M, int N, int NP, int K,
                                    int KT, int stride_xm, int split_k, int stages, int dtype, void* stream) {
  if (M < 1 || M > 16 || K < 16 || K % 16 != 0 || KT * 64 < K || KT * 64 >= K + 64 || NP % 16 != 0 || N > NP ||
      stride_xm % 8 != 0 || split_k < 1 || (dtype != 0 && dtype != 1))
    return -1;
  const Out o{y, bias, nullptr, static_cast<float*>(ws), static_cast<int*>(counters), M, N, split_k, 0};
  const Args a{o, x, static_cast<const uint8_t*>(qw), static_cast<const uint8_t*>(scales),
               static_cast<const float*>(gs), NP, K, KT, stride_xm};
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  return dtype == 0 ? by_tokens<__nv_bfloat16>(a, stages, s) : by_tokens<__half>(a, stages, s);
}
