// Weight-only 8-bit decode: y [M, N] = s_n * sum_k x[m, k] * q[n, k] (+ bias) for M <= 16 tokens,
// q int8 (w8a16: i8_t{16,64}x64) or float8 e4m3 (fp8: fp8_rowmajor on sm89+, fp8_t16x64_upcast),
// s fp32 per channel or per tensor, x bf16 or fp16 (docs/layouts.md, docs/kernels.md).
//   turbopack_w8_decode
//
// Layout-neutral addressing: byte (n, k) of every byte layout is
//   (n / TN) * s_tile + (n % TN) * s_row + (k / 64) * s_stage + k % 64
// (tiled [NT, K/64, TN, 64]: s_row 64, s_stage TN*64; row-major [NT, TN, K]: s_row K, s_stage 64),
// so one warp's stage, 64 k of 16 rows, is 16 runs of 64 contiguous bytes (one 1 KiB block in the
// tiled layouts): thread (g, c) of the MMA copies k = 16c..16c+15 of rows g and g + 8 into its own
// ring slots with cp.async and reads back only what it copied (no barrier), a STAGES-deep ring per
// warp, as in w4.cu.
//
// K order inside the MMA (m16n8k16, W as A, x as B): at step j (0..3) thread c holds codes
// 4j..4j+3 of its 16; A's pair registers a0/a1 (the MMA's k = 2c, 2c+1) take codes 4j, 4j+1 of rows
// g / g + 8 and a2/a3 (k = 2c+8, 2c+9) codes 4j+2, 4j+3; B's b0/b1 are x at the same k, words 2j and
// 2j+1 of the thread's 32 bytes of x. A and B are permuted alike, so the sum over k is unchanged.
//
// Codes -> 16 bits, exact in registers (two codes per 32-bit register):
//   int8: common.cuh i8_pairs (a prmt under a magic exponent and one HSUB2 a pair).
//   e4m3: the 7 magnitude bits shifted under a 16-bit sign (by 4 for bf16, by 7 for fp16) are the
//     same number scaled by 2^-120 (bf16) or 2^-8 (fp16), subnormals included (e4m3's 4-bit
//     exponent lands in the low bits of the wider one; an e4m3 subnormal is a bf16/fp16 subnormal
//     with the same scale); the scale comes back exactly (below, at Codes).
// Accumulation in fp32, the row scale once in the store: y = fp32(sum x * q) * s, the weights-only
// contract of these layouts (docs/layouts.md), up to fp32 summation order.
#include "common.cuh"
#include "rows_store.cuh"  // rows_store, glu_store, the norm fold

namespace {

constexpr int kWarps = 4;    // 4 x 16 rows per CTA
constexpr int kStageK = 64;  // one stage: 64 codes of 16 rows = 1 KiB per warp
enum : int { kInt8 = 0, kE4M3 = 1 };
constexpr int kRows = 4;     // VARIANT of the decode by rows (the number W4's has, cuda_w4.ROWS)
constexpr int kRowsWide = 6;  // the decode by rows on 128-k ring slots (Slot, below)

template <typename T, int CODE> struct Codes;
// cvt: lo = codes (0, 1), hi = codes (2, 3) of the 32-bit word w, as 16-bit pairs. kXScale (16-bit
// pair bits, 0 = none) multiplies x before the MMA and kPost the fp32 sum after it.
template <typename T> struct Exact {
  static constexpr uint32_t kXScale = 0;
  static constexpr float kPost = 1.f;
};
template <typename T> struct Codes<T, kInt8> : Exact<T> {
  static __device__ __forceinline__ void cvt(uint32_t w, uint32_t& lo, uint32_t& hi) { i8_pairs<T>(w, lo, hi); }
};
// e4m3 -> bf16 in three instructions per pair: prmt puts each code in the low byte of a 16-bit half
// and, with the selector's sign-replicate bit, its sign across the high byte; << 4 and one mask
// keep sign (bit 15) and the 7 magnitude bits (4..10): w * 2^-120 as bf16, subnormal codes too
// (the tensor cores keep bf16 subnormals: benchmarks/device/probe_w8.py). x * 2^64 before the MMA
// and 2^56 after it undo the scale with the products in fp32's normal range (x would overflow
// bf16 only past 2^64).
template <> struct Codes<__nv_bfloat16, kE4M3> {
  static constexpr uint32_t kXScale = 0x5F805F80u;  // bf16 2^64
  static constexpr float kPost = 72057594037927936.f;  // 2^56
  static __device__ __forceinline__ void cvt(uint32_t w, uint32_t& lo, uint32_t& hi) {
    lo = (prmt(w, 0u, 0x9180) << 4) & 0x87F087F0u;
    hi = (prmt(w, 0u, 0xB3A2) << 4) & 0x87F087F0u;
  }
};
// e4m3 -> fp16: sm89+ converts natively (cvt.rn.f16x2.e4m3x2, exact); sm80 shifts the code under
// fp16's sign as above (<< 7: w * 2^-8, fp16 subnormals for the smallest codes) and multiplies by
// 2^8 (fp16 x cannot take the scale: it overflows past 256).
template <> struct Codes<__half, kE4M3> : Exact<__half> {
  static __device__ __forceinline__ void cvt(uint32_t w, uint32_t& lo, uint32_t& hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    asm("{.reg .b16 l, h;\n mov.b32 {l, h}, %2;\n cvt.rn.f16x2.e4m3x2 %0, l;\n cvt.rn.f16x2.e4m3x2 %1, h;}\n"
        : "=r"(lo), "=r"(hi) : "r"(w));
#else
    lo = Half16<__half>::mul2((prmt(w, 0u, 0x9180) << 7) & 0xBF80BF80u, 0x5C005C00u);
    hi = Half16<__half>::mul2((prmt(w, 0u, 0xB3A2) << 7) & 0xBF80BF80u, 0x5C005C00u);
#endif
  }
};

// A ring slot: SUB consecutive stages of the warp's 16 rows, sub-stage h = [row g | row g + 8][lane],
// 16 codes each. SUB = 2 (kRowsWide) was made for fp8_rowmajor, whose stage is 16 runs of 64 bytes K
// bytes apart (the tiled layouts' is one contiguous KiB): one slot copies each row's whole 128-byte
// line at once, where two 64-byte stages a ring apart left each row's DRAM page to be opened twice
// (run 16, 4096 x 14336: row-major 28.9 us plain, 23.4 wide; tiled 22.9 plain, 22.0 wide, so it is
// built for the tiled int8 layouts too).
template <int SUB> struct Slot {
  uint4 w[SUB][2][32];
};
using Stage = Slot<1>;

struct Args {
  Out o;
  const void* x; const uint8_t* qw;
  long long s_tile, s_row, s_stage;
  int NP, K, TN, stride_xm;
  int act;  // the decode by rows: 0, or kActSilu / kActGeluTanh: y = act(gate) * up of a fused gate|up
  Fold fold;  // the decode by rows: the norm fold (rows_store.cuh), as W4's rows with x per stage
};

template <int SUB>
__device__ __forceinline__ void issue_slot(Slot<SUB>& st, const uint8_t*& src, long long row8, long long step, int lane) {
#pragma unroll
  for (int h = 0; h < SUB; ++h) {
    cp_async16(&st.w[h][0][lane], src + h * step);
    cp_async16(&st.w[h][1][lane], src + h * step + row8);
  }
  src += SUB * step;  // pointers advance by a constant: no 64-bit multiply per slot
}

// Register cap: 64 for one token column lets 8 CTAs (32 warps) share an SM, the bytes in flight
// that a memory-bound GEMV needs; two token columns keep their registers.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define TP_W8_MIN_BLOCKS(NTOK) 1
#else
#define TP_W8_MIN_BLOCKS(NTOK) ((NTOK) == 1 ? 8 : 1)
#endif

// One warp's pass over ring slots [s_lo, s_hi) of its 16 rows (row = n0 + g; a slot is SUB stages):
// the first STAGES - 1 slots are issued before pdl_wait (weights only), x is read per slot from L1
// after it; out is the warp's fp32 sums, the MMA's C fragment (rows g, g + 8 of token columns 2c,
// 2c + 1 + 8t).
template <typename T, int CODE, int NTOK, int STAGES, int SUB = 1, typename AfterWait>
__device__ __forceinline__ void w8_pass(const Args& a, Slot<SUB>* ring, int row, int s_lo, int s_hi, int lane,
                                        float (&out)[NTOK][4], AfterWait after_wait) {
  using H = Half16<T>;
  using C = Codes<T, CODE>;
  const int g = lane >> 2, c = lane & 3;
  const uint8_t* wsrc = a.qw + (row / a.TN) * a.s_tile + (row % a.TN) * a.s_row + SUB * s_lo * a.s_stage + 16 * c;
  const long long row8 = 8 * a.s_row;  // rows g and g + 8 share a tile (TN is a multiple of 16)
  const T* x = static_cast<const T*>(a.x);
  const uint4* xsrc[NTOK];
  bool has_tok[NTOK];
#pragma unroll
  for (int t = 0; t < NTOK; ++t) {
    const int tok = 8 * t + g;
    has_tok[t] = tok < a.o.M;
    xsrc[t] = reinterpret_cast<const uint4*>(x + (long long)(has_tok[t] ? tok : 0) * a.stride_xm + SUB * s_lo * kStageK +
                                             16 * c);
  }
  float acc[2][NTOK][4];  // two independent MMA chains per token column (even / odd steps)
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int t = 0; t < NTOK; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[h][t][i] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s_lo + s < s_hi) issue_slot(ring[s], wsrc, row8, a.s_stage, lane);
    cp_async_commit();
  }
  pdl_wait();  // only weights and scales are read before it (common.cuh)
  after_wait();  // the rows kernel's fold_fetch: its copies join the loop's next cp.async group
  int rd = 0, wr = STAGES - 1;
  for (int st = s_lo; st < s_hi; ++st) {
    uint4 xv[SUB][NTOK][2];
#pragma unroll
    for (int h = 0; h < SUB; ++h)
#pragma unroll
      for (int t = 0; t < NTOK; ++t) {
        xv[h][t][0] = has_tok[t] ? __ldg(xsrc[t]) : make_uint4(0, 0, 0, 0);
        xv[h][t][1] = has_tok[t] ? __ldg(xsrc[t] + 1) : make_uint4(0, 0, 0, 0);
        xsrc[t] += kStageK / 8;
        if (C::kXScale != 0) {
          uint32_t* xw = reinterpret_cast<uint32_t*>(&xv[h][t][0]);
#pragma unroll
          for (int i = 0; i < 8; ++i) xw[i] = H::mul2(xw[i], C::kXScale);
        }
      }
    cp_async_wait<STAGES - 2>();
    if (st + STAGES - 1 < s_hi) issue_slot(ring[wr], wsrc, row8, a.s_stage, lane);
    cp_async_commit();
    wr = wr + 1 == STAGES ? 0 : wr + 1;
#pragma unroll
    for (int h = 0; h < SUB; ++h) {
      const uint4 wl = ring[rd].w[h][0][lane], wh = ring[rd].w[h][1][lane];  // this thread's own copies
      const uint32_t lw[4] = {wl.x, wl.y, wl.z, wl.w}, hw[4] = {wh.x, wh.y, wh.z, wh.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t af[4];
        C::cvt(lw[j], af[0], af[2]);
        C::cvt(hw[j], af[1], af[3]);
#pragma unroll
        for (int t = 0; t < NTOK; ++t) {
          const uint4& q = xv[h][t][j >> 1];
          const uint32_t b0 = (j & 1) ? q.z : q.x, b1 = (j & 1) ? q.w : q.y;
          H::mma(acc[j & 1][t], af, b0, b1);
        }
      }
    }
    rd = rd + 1 == STAGES ? 0 : rd + 1;
  }
  cp_async_commit();  // after_wait's copies, where the loop committed no group after them
  cp_async_wait<0>();
#pragma unroll
  for (int t = 0; t < NTOK; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) out[t][i] = (acc[0][t][i] + acc[1][t][i]) * C::kPost;
}

// CL: launched in clusters of its split-K CTAs, which sum their partials there (common.cuh
// cluster_sum through store_tile's scratch: the warp's drained ring)
template <typename T, int CODE, int NTOK, int STAGES, bool CL = false>
__global__ void __launch_bounds__(kWarps * 32, TP_W8_MIN_BLOCKS(NTOK)) w8_decode_kernel(const Args a) {
  extern __shared__ uint4 smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  Stage* ring = reinterpret_cast<Stage*>(smem) + warp * STAGES;
  const int n0 = blockIdx.x * (kWarps * 16) + warp * 16;
  const bool active = n0 < a.NP;
  const int stages = a.K / kStageK;
  const int per = (stages + a.o.split_k - 1) / a.o.split_k;
  const int s_lo = blockIdx.y * per, s_hi = active ? min(stages, s_lo + per) : s_lo;
  float out[NTOK][4];
  w8_pass<T, CODE, NTOK, STAGES>(a, ring, n0 + g, s_lo, s_hi, lane, out, [] {});
  store_tile<T, NTOK>(a.o, out, n0, g, c, active, CL ? reinterpret_cast<float4*>(ring) : nullptr);
}

// The decode by rows (VARIANT 4, as w4_rows.cuh for W4): a CTA per 16 rows whose W warps split K
// among themselves; their sums meet in shared memory (each warp's drained ring: [16 tokens][16 rows]
// fp32, 1 KiB of its >= 4 KiB) in warp order, so no split-K workspace, counter or last CTA, and y is
// the same bits run to run. NTOK token columns of 8 (M <= 8 or 16). Register cap 64 at one column
// (1024 threads per SM), 128 at two (512). SUB = 2: VARIANT 6, 128-k slots (Slot). GLU (Args::act,
// a fused gate|up of 2 N rows): half the warps on gate's rows n0.., half on up's (n0 + N), and the
// store writes act(gate) * up (rows_store.cuh glu_store), as W4's rows with x per stage do.
template <typename T, int CODE, int NTOK, int STAGES, int W, int SUB = 1, bool GLU = false>
__global__ void __launch_bounds__(W * 32, (NTOK == 1 ? 1024 : 512) / (W * 32)) w8_rows_kernel(const Args a) {
  extern __shared__ uint4 smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  auto ring = [&](int w) { return reinterpret_cast<Slot<SUB>*>(smem) + w * STAGES; };
  auto part = [&](int w) { return reinterpret_cast<float(*)[16]>(ring(w)); };  // [token][row], once drained
  const int n0 = blockIdx.x * 16;
  constexpr int WS = GLU ? W / 2 : W;  // warps per K split
  const int up = GLU && warp >= WS;     // GLU: this warp reads up's rows
  const int slots = a.K / (SUB * kStageK), per_w = (slots + WS - 1) / WS;
  const int s_lo = min(slots, (warp - up * WS) * per_w), s_hi = min(slots, s_lo + per_w);
  float out[NTOK][4];
  void* staged = ring(W);  // a fold's, past the rings (fold_smem)
  w8_pass<T, CODE, NTOK, STAGES, SUB>(a, ring(warp), n0 + up * a.o.N + g, s_lo, s_hi, lane, out,
                                      [&] { fold_fetch(a.fold, a.o.M, a.o.N, n0, staged, W * 32); });
  __syncwarp();  // every lane's last reads of its ring slots are done
  if constexpr (GLU)
    glu_store<T, NTOK, W>(a.o, a.act, out, n0, warp, g, c, part, a.fold, a.K, staged);
  else
    rows_store<T, NTOK, W>(a.o, out, n0, warp, g, c, part, a.fold, a.K, staged);
}

// The kernels with the cluster store: one token column (M <= 8), every ring depth
template <int NTOK>
constexpr bool kClusterBuilt = NTOK == 1;

// cluster (sm_90+, split_k <= 16): the split-K CTAs of a row tile as one thread-block cluster, where
// kClusterBuilt; else the global split-K path
template <typename T, int CODE, int NTOK, int STAGES>
int launch(const Args& a, bool cluster_req, cudaStream_t s) {
  const bool cluster = kClusterBuilt<NTOK> && cluster_req && a.o.split_k > 1;
  auto kern = cluster ? w8_decode_kernel<T, CODE, NTOK, STAGES, kClusterBuilt<NTOK>>
                      : w8_decode_kernel<T, CODE, NTOK, STAGES>;
  const int smem = kWarps * STAGES * static_cast<int>(sizeof(Stage));
  static bool raised[2] = {false, false}, wide = false;  // one attribute call per kernel (not a per-launch cost)
  if (!raised[cluster]) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return static_cast<int>(e);
    raised[cluster] = true;
  }
  if (cluster) {
    const cudaError_t e = allow_cluster(kern, a.o.split_k, wide);
    if (e != cudaSuccess) return static_cast<int>(e);
  }
  const dim3 grid((a.NP + kWarps * 16 - 1) / (kWarps * 16), a.o.split_k), block(kWarps * 32);
  return static_cast<int>(launch_with(kern, grid, block, smem, s, Launch{g_pdl != 0, cluster ? a.o.split_k : 1}, a));
}

// VARIANT 4 and 6, the decode by rows: split_k is its warps (8 or 16)
template <typename T, int CODE, int NTOK, int STAGES, int W, int SUB>
int launch_rows(const Args& a, cudaStream_t s) {
  void (*kern)(const Args) = a.act ? w8_rows_kernel<T, CODE, NTOK, STAGES, W, SUB, true>
                                    : w8_rows_kernel<T, CODE, NTOK, STAGES, W, SUB, false>;
  const int rings = W * STAGES * static_cast<int>(sizeof(Slot<SUB>));
  const int smem = rings + fold_smem(a.fold, a.o.M);
  static bool raised[2] = {false, false};
  const cudaError_t e = raise_smem_once(kern, raised[a.act != 0], rings + kFoldSmem);
  const unsigned ctas = a.act ? a.o.N / 16 : a.NP / 16;  // GLU: a CTA per 16 rows of h
  return static_cast<int>(e != cudaSuccess ? e : launch_kernel(kern, dim3(ctas), dim3(W * 32), smem, s, a));
}

// Ring depths: 4 and 6 stages of 1 KiB a warp; wide, 2 and 3 slots of 2 KiB (the bytes of 4 and 6
// stages: 16 warps x 3 slots = 96 KiB, two CTAs an SM)
template <typename T, int CODE, int NTOK>
int rows_by_stages(const Args& a, int stages, bool wide, cudaStream_t s) {
  const bool w16 = a.o.split_k == 16;
  if (wide) {
    if (a.K % (2 * kStageK) != 0) return -1;
    switch (stages) {
      case 2: return w16 ? launch_rows<T, CODE, NTOK, 2, 16, 2>(a, s) : launch_rows<T, CODE, NTOK, 2, 8, 2>(a, s);
      case 3: return w16 ? launch_rows<T, CODE, NTOK, 3, 16, 2>(a, s) : launch_rows<T, CODE, NTOK, 3, 8, 2>(a, s);
      default: return -2;
    }
  }
  switch (stages) {
    case 4: return w16 ? launch_rows<T, CODE, NTOK, 4, 16, 1>(a, s) : launch_rows<T, CODE, NTOK, 4, 8, 1>(a, s);
    case 6: return w16 ? launch_rows<T, CODE, NTOK, 6, 16, 1>(a, s) : launch_rows<T, CODE, NTOK, 6, 8, 1>(a, s);
    default: return -2;
  }
}

template <typename T, int CODE>
int by_rows(const Args& a, int stages, bool wide, cudaStream_t s) {
  if (a.o.split_k != 8 && a.o.split_k != 16) return -1;
  return a.o.M <= 8 ? rows_by_stages<T, CODE, 1>(a, stages, wide, s)
                    : rows_by_stages<T, CODE, 2>(a, stages, wide, s);
}

template <typename T, int CODE, int NTOK>
int by_stages(const Args& a, int stages, bool cluster, cudaStream_t s) {
  switch (stages) {
    case 4: return launch<T, CODE, NTOK, 4>(a, cluster, s);
    case 6: return launch<T, CODE, NTOK, 6>(a, cluster, s);
    case 8: return launch<T, CODE, NTOK, 8>(a, cluster, s);
    default: return -2;
  }
}

template <typename T, int CODE>
int by_tokens(const Args& a, int stages, bool cluster, int variant, cudaStream_t s) {
  if (variant == kRows || variant == kRowsWide) return by_rows<T, CODE>(a, stages, variant == kRowsWide, s);
  return a.o.M <= 8 ? by_stages<T, CODE, 1>(a, stages, cluster, s) : by_stages<T, CODE, 2>(a, stages, cluster, s);
}

template <typename T>
int by_code(const Args& a, int code, int stages, bool cluster, int variant, cudaStream_t s) {
  return code == kInt8 ? by_tokens<T, kInt8>(a, stages, cluster, variant, s)
                       : by_tokens<T, kE4M3>(a, stages, cluster, variant, s);
}

}  // namespace

// code: 0 = int8, 1 = e4m3; dtype: 0 = bf16, 1 = fp16 (x, bias and y alike); scales fp32,
// scale_stride 1 (per channel) or 0 (per tensor); cluster (sm_90+, split_k <= 16): the split-K CTAs
// of a row tile reduce in a thread-block cluster, not through ws/counters; variant 4: the decode by
// rows (split_k = its warps, 8 or 16; stages 4 or 6; ws/counters unused); variant 6: the same on
// 128-k slots (K % 128 == 0; stages 2 or 3); else split-K. act (the rows variants, no bias, N % 32
// == 0): the fused gate|up's GLU, y [M, N / 2] = act(gate) * up with act 1 = SiLU, 2 = GeLU-tanh.
// fold_* (the rows variants): the norm fold, as turbopack_w4_decode's (rows_store.cuh Fold).
// Returns 0, -1 bad arguments, -2 unsupported STAGES, else the CUDA error.
extern "C" int turbopack_w8_decode(const void* x, const void* qw, const void* scales, const void* bias, void* y,
                                   void* ws, void* counters, int M, int N, int NP, int K, int TN, long long s_tile,
                                   long long s_row, long long s_stage, int scale_stride, int stride_xm, int split_k,
                                   int stages, int code, int cluster, int variant, int act, const void* fold_res,
                                   const void* fold_w, void* fold_r_out, void* fold_ss, const void* fold_ss_in,
                                   float fold_eps, int fold_parts, int dtype, void* stream) {
  const Fold f{fold_res, fold_w, fold_r_out, static_cast<float*>(fold_ss), static_cast<const float*>(fold_ss_in),
               fold_eps, fold_parts};
  if (!fold_ok(f, M, N, act, variant == kRows || variant == kRowsWide)) return -1;
  if (M < 1 || M > 16 || K % kStageK != 0 || TN % 16 != 0 || NP % 16 != 0 || stride_xm % 8 != 0 || split_k < 1 ||
      (code != kInt8 && code != kE4M3) || (dtype != 0 && dtype != 1) || s_row % 16 != 0 || s_stage % 16 != 0 ||
      (cluster && split_k > 16) || act < 0 || act > kActGeluTanh ||
      (act && ((variant != kRows && variant != kRowsWide) || bias != nullptr || N % 32 != 0)))
    return -1;
  const Out o{y, bias, static_cast<const float*>(scales), static_cast<float*>(ws), static_cast<int*>(counters),
              M, act ? N / 2 : N, split_k, scale_stride};
  const Args a{o, x, static_cast<const uint8_t*>(qw), s_tile, s_row, s_stage, NP, K, TN, stride_xm, act, f};
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  return dtype == 0 ? by_code<__nv_bfloat16>(a, code, stages, cluster != 0, variant, s)
                    : by_code<__half>(a, code, stages, cluster != 0, variant, s);
}
