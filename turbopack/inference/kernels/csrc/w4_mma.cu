// W4A16 for 16 < M <= 128 tokens (batched decode, short prefill) from the packed w4_t{16,64}x64
// layouts: turbopack_w4_mma. The decode kernel (w4.cu) reads x from L1 per warp and decodes each
// weight fragment for one or two n8 token columns; at M = 64 that is eight decodes of every weight
// and eight times the activation traffic. Here a CTA owns BN = 16 * R * WARPS weight rows x BM (32,
// 64, 128) tokens: each stage (128 k) the CTA copies its weights, their scales and zero points and
// the BM x 128 activation tile into one slot of a STAGES-deep cp.async ring in shared memory (one
// __syncthreads per stage), and each warp decodes the A fragments of its R x 16 rows once per 16 k
// and issues R * BM / 8 mma.sync.m16n8k16 with them (Marlin's reuse of one dequantized fragment over
// several n8 columns), fp32 accumulators for all BM tokens in registers (R * BM / 2 per thread).
//
// R (rows per warp / 16, the config's WARP_N / 16): each B fragment of x read from shared memory
// feeds R MMAs. With R = 1 every MMA reads its 256 bytes of x from shared memory, and ncu on the H200
// (run 8, M = 64) found the kernel bound there: 9 cycles per issued instruction, mostly short
// scoreboard, MIO throttle and wait stalls, at 31% tensor-pipe use and 18% of DRAM bandwidth. R = 2
// halves the shared-memory bytes per MMA and doubles the independent MMAs per load; it costs twice
// the accumulators, so it stops at BM = 64 (128 registers).
//
// Weights in A are the contract's 16-bit weights, not w4.cu's raw (M + q): lop3 gives (M + q) pairs,
// HSUB2 of the (M + z) pair gives q - z exactly, HMUL2 by the scale pair rounds (q - z) * s once, i.e.
// the contract's weight bit for bit (docs/layouts.md), so there is no per-group fp32 epilogue and no
// sum of x: the accumulators run over the CTA's whole K range. Three ops per A register are amortized
// over BM / 8 MMAs (w4.cu's decode kernel avoids them because it has one or two columns to feed).
//
// K order: as w4.cu, thread c of a quad takes bytes 8c..8c+7 of its two rows in each 64-wide tile (k =
// 16c..16c+15), MMA step u of the tile's four takes k = 16c + 4u .. 16c + 4u + 3; B is read with the
// same permutation, so one LDS.128 of x gives the B registers of two steps. x rows in shared memory
// are 272 bytes (128 k + 8 pad): the eight lanes of an LDS.128 phase (tokens g, g+1, c = 0..3) then
// cover all 32 banks.
//
// Split-K over blockIdx.z by slices (store_sliced: each K slice stores its fp32 tile to its own plane
// of the workspace, the last of a (row tile, token tile) counter to arrive sums the planes in order);
// token tiles are blockIdx.x, the fastest-varying, so the CTAs that read the same weights run together
// (L2).
#include "w4_mma.cuh"

namespace {

constexpr int kXRow = kStageK / 8 + 1;  // uint4 per token row of a stage's x tile (272 bytes)

// One ring slot, in uint4, for F = WARPS * R fragments of 16 rows (fragment r of warp w is F-index
// w * R + r, rows 16 * (w * R + r) of the CTA's): [F][2 tiles][32] weights, [F][kSzChunks]
// scales/zeros, [BM][kXRow] x
template <int F, int BM>
struct Slot {
  static constexpr int kW = F * 64, kSz = F * kSzChunks, kX = BM * kXRow;
  static constexpr int kSize = kW + kSz + kX;
};

// The copies of one stage: the weights, scales and zero points of the warp's R fragments
// (WeightFeed), and every thread its x chunks (16 bytes of one token row per pass).
template <typename T, int WARPS, int R, int BM>
struct Feed {
  using S = Slot<WARPS * R, BM>;
  static constexpr int kXRows = WARPS * 32 / 16;  // x rows one pass of the CTA's threads copies
  static constexpr int kXPasses = BM / kXRows;
  WeightFeed<T, R> w;
  uint32_t xdst;  // slot 0's shared address of this thread's x chunk (pass 0)
  int xrow, xcol;  // token row (pass 0) and element column of this thread's x chunks
  __device__ __forceinline__ void init(const MmaArgs& a, uint32_t base, int n0, int s_lo, int warp, int lane) {
    w.init(a, base, S::kW, n0, s_lo, warp, lane);
    xrow = threadIdx.x >> 4, xcol = 8 * (threadIdx.x & 15);
    xdst = base + (S::kW + S::kSz + xrow * kXRow + (threadIdx.x & 15)) * 16;
  }
  __device__ __forceinline__ void issue(const MmaArgs& a, uint32_t slot_off, int s) {
    w.issue(a, slot_off);
    const T* x = static_cast<const T*>(a.x) + s * kStageK + xcol;
    const int tok0 = blockIdx.x * BM + xrow;
#pragma unroll
    for (int p = 0; p < kXPasses; ++p) {
      const int tok = min(tok0 + p * kXRows, a.M - 1);  // past M: a copy of the last token, never stored
      cp_async16_s(xdst + slot_off + p * kXRows * kXRow * 16, x + (long long)tok * a.stride_xm);
    }
  }
};

// acc[r][nb] += W (fragment r's 16 rows) x X^T (token block nb) over one 128-k slot. R = 1 decodes a
// fragment once per step pair and streams the token blocks past it; R = 2 loads CH token blocks' B
// registers once for both fragments and decodes each fragment per chunk (twice at BM = 64): the
// decode is 3 ALU ops per A register, and holding both fragments' A registers across the chunks
// would spill at 128 registers (ptxas, sm_90a).
template <typename T, int WARPS, int R, int BM>
__device__ __forceinline__ void slot_mma(float (&acc)[R][BM / 8][4], const uint4* slot, bool asym, int warp, int g,
                                         int c) {
  using H = Half16<T>;
  using S = Slot<WARPS * R, BM>;
  constexpr int NB = BM / 8, CH = NB < 8 / R ? NB : 8 / R;  // token blocks whose B registers are live at once
  const uint4* wt = slot + warp * R * 64;
  const uint4* sz = slot + S::kW + warp * R * kSzChunks;
  const uint4* xs = slot + S::kW + S::kSz;
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    uint32_t sc[R][2], mz[R][2];  // [fragment][rows g, g + 8]
    frag_sz<T, R>(sc, mz, sz, j, g, asym);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      uint32_t af[R][2][4];
      if (R == 1) decode_af<T>(af[0], wt, j, h, g, c, sc[0], mz[0]);
#pragma unroll
      for (int nb0 = 0; nb0 < NB; nb0 += CH) {
        uint4 b[CH];  // k = 64j + 16c + 8h .. +7 of token nb*8 + g: steps 2h (x, y) and 2h + 1 (z, w)
#pragma unroll
        for (int i = 0; i < CH; ++i) b[i] = xs[((nb0 + i) * 8 + g) * kXRow + 8 * j + 2 * c + h];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          if (R > 1) decode_af<T>(af[r], wt + r * 64, j, h, g, c, sc[r], mz[r]);
          // the two steps of one accumulator CH MMAs apart (mma.sync is asm volatile: issued in this order)
#pragma unroll
          for (int i = 0; i < CH; ++i) H::mma(acc[r][nb0 + i], af[r][0], b[i].x, b[i].y);
#pragma unroll
          for (int i = 0; i < CH; ++i) H::mma(acc[r][nb0 + i], af[r][1], b[i].z, b[i].w);
        }
      }
    }
  }
}

// Register caps: on sm_90a 128 for R * BM <= 64 (2 CTAs of 8 warps or 4 of 4 per SM, as shared memory
// allows at 3-4 stages; unbounded R = 1 took 68-111 and spilled nothing); the 128-token tile is one CTA
// per SM by its shared memory, so it takes what it wants (184-192); R = 2 at BM = 64 spilled 72-184
// bytes under 128 (64 accumulators), and its x tile holds it to 2 CTAs of 4 warps per SM anyway, so
// it is unbounded too (164-168). sm_80 and Blackwell, not here to tune on, get the compiler's allocation at
// one CTA (with no bound ptxas spilled 4-8 bytes at BM = 32 on sm_80 and sm_100a).
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 900 || __CUDA_ARCH__ >= 1000)
#define TP_MMA_MIN_BLOCKS(WARPS, R, BM) 1
#else
#define TP_MMA_MIN_BLOCKS(WARPS, R, BM) ((R) * (BM) <= 64 ? 16 / (WARPS) : 1)
#endif
template <typename T, int WARPS, int R, int BM>
__global__ void __launch_bounds__(WARPS * 32, TP_MMA_MIN_BLOCKS(WARPS, R, BM)) w4_mma_kernel(const MmaArgs a) {
  constexpr int NB = BM / 8;
  extern __shared__ uint4 smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  const int n0 = (blockIdx.y * WARPS + warp) * (16 * R);
  const int S = a.K / kStageK;
  const int per = (S + a.split_k - 1) / a.split_k;
  const int s_lo = min(S, static_cast<int>(blockIdx.z) * per), n_st = min(S, s_lo + per) - s_lo;
  const bool asym = a.zeros != nullptr;
  Feed<T, WARPS, R, BM> feed;
  feed.init(a, static_cast<uint32_t>(__cvta_generic_to_shared(smem)), n0, s_lo, warp, lane);
  constexpr int kSlot = Slot<WARPS * R, BM>::kSize;
  constexpr uint32_t kSlotBytes = kSlot * 16;
  for (int s = 0; s < a.stages - 1; ++s) {
    if (s < n_st) feed.issue(a, s * kSlotBytes, s_lo + s);
    cp_async_commit();
  }
  float acc[R][NB][4];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int t = 0; t < NB; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[r][t][i] = 0.f;
  int rd = 0, wr = a.stages - 1;
  for (int i = 0; i < n_st; ++i) {
    wait_ring(a.stages);
    __syncthreads();  // slot rd is complete for every thread, and every warp is done with slot wr
    if (i + a.stages - 1 < n_st) feed.issue(a, wr * kSlotBytes, s_lo + i + a.stages - 1);
    cp_async_commit();
    slot_mma<T, WARPS, R, BM>(acc, smem + rd * kSlot, asym, warp, g, c);
    rd = rd + 1 == a.stages ? 0 : rd + 1;
    wr = wr + 1 == a.stages ? 0 : wr + 1;
  }
  cp_async_wait<0>();
  store_sliced<T, R, NB>(a.o, acc, n0, g, c, n0 < a.NP, blockIdx.y * gridDim.x + blockIdx.x, blockIdx.x * BM);
}

template <typename T, int WARPS, int R, int BM>
int launch(const MmaArgs& a, cudaStream_t s) {
  const int smem = a.stages * Slot<WARPS * R, BM>::kSize * static_cast<int>(sizeof(uint4));
  static int raised = 0;  // the largest dynamic shared memory allowed so far (one attribute call per size)
  if (smem > raised) {
    const cudaError_t e = cudaFuncSetAttribute(w4_mma_kernel<T, WARPS, R, BM>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return static_cast<int>(e);
    raised = smem;
  }
  const dim3 grid((a.M + BM - 1) / BM, (a.NP + WARPS * R * 16 - 1) / (WARPS * R * 16), a.split_k);
  w4_mma_kernel<T, WARPS, R, BM><<<grid, WARPS * 32, smem, s>>>(a);
  return static_cast<int>(cudaGetLastError());
}

// BM caps the token tile: a call with fewer tokens runs the smallest tile that covers them (R = 2:
// at most 64)
template <typename T, int WARPS, int R>
int by_bm(const MmaArgs& a, int bm, cudaStream_t s) {
  if (bm <= 32 || a.M <= 32) return launch<T, WARPS, R, 32>(a, s);
  if (R == 2 || bm <= 64 || a.M <= 64) return launch<T, WARPS, R, 64>(a, s);
  return launch<T, WARPS, R, R == 1 ? 128 : 64>(a, s);
}

template <typename T>
int by_bn(const MmaArgs& a, int bn, int wn, int bm, cudaStream_t s) {
  if (wn == 32) return by_bm<T, 4, 2>(a, bm, s);  // BN = 128 only (the host checks)
  if (bn == 256) return a.M <= 32 || bm == 32 ? launch<T, 16, 1, 32>(a, s) : launch<T, 16, 1, 64>(a, s);
  return bn == 64 ? by_bm<T, 4, 1>(a, bm, s) : by_bm<T, 8, 1>(a, bm, s);
}

}  // namespace

// y [M, N] = x [M, K] W^T (+ bias) for any M >= 1; dtype 0 = bf16, 1 = fp16 (x, scales, bias, y). bn: weight
// rows per CTA (64, 128, 256), wn: weight rows per warp (16: bn / 16 warps; 32: 4 warps, bn = 128 only), bm: token
// tile (32, 64, 128; capped by M; 16 warps and wn = 32 take at most 64: 128 tokens would need ~190
// registers, over the 128 of 512 threads), stages: ring depth (3-5).
// Returns 0, -1 for bad arguments, else the CUDA error. split_k > 1 needs ws (fp32 [split_k * M * N],
// scratch) and counters (int32, one per row tile x token tile, zeroed, left zeroed).
extern "C" int turbopack_w4_mma(const void* x, const void* qw, const void* scales, const void* zeros, const void* bias,
                                void* y, void* ws, void* counters, int M, int N, int NP, int K, int KT, int KGP, int TN,
                                int G, int stride_xm, int split_k, int bn, int wn, int bm, int stages, int dtype,
                                void* stream) {
  MmaArgs a;
  if (!mma_args(a, x, qw, scales, zeros, bias, y, ws, counters, M, N, NP, K, KT, KGP, TN, G, stride_xm, split_k, stages,
                dtype) ||
      (bn != 64 && bn != 128 && bn != 256) || (wn != 16 && (wn != 32 || bn != 128)) ||
      (bm != 32 && bm != 64 && bm != 128) || ((bn == 256 || wn == 32) && bm == 128))
    return -1;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  return dtype == 0 ? by_bn<__nv_bfloat16>(a, bn, wn, bm, s) : by_bn<__half>(a, bn, wn, bm, s);
}
