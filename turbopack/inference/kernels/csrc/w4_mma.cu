// W4A16 for 16 < M <= 128 tokens (batched decode, short prefill) from the packed w4_t{16,64}x64
// layouts: turbopack_w4_mma. The decode kernel (w4.cu) reads x from L1 per warp and decodes each
// weight fragment for one or two n8 token columns; at M = 64 that is eight decodes of every weight
// and eight times the activation traffic. Here a CTA owns BN = 16 * WARPS weight rows x BM (32, 64,
// 128) tokens: each stage (128 k) the CTA copies its weights, their scales and zero points and the
// BM x 128 activation tile into one slot of a STAGES-deep cp.async ring in shared memory (one
// __syncthreads per stage), and each warp decodes the A fragments of its 16 rows once per 16 k and
// issues BM / 8 mma.sync.m16n8k16 with them (Marlin's reuse of one dequantized fragment over several
// n8 columns), fp32 accumulators for all BM tokens in registers (BM / 2 per thread).
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
// Split-K over blockIdx.z (store_tile_at: workspace + counter per (row tile, token tile)); token tiles
// are blockIdx.x, the fastest-varying, so the CTAs that read the same weights run together (L2).
#include "common.cuh"

namespace {

constexpr int kStageK = 128;
constexpr int kXRow = kStageK / 8 + 1;  // uint4 per token row of a stage's x tile (272 bytes)
constexpr int kSzChunks = 6;           // per warp and stage: scales of two 64-k tiles (2 x 2), zero points (2)

struct MmaArgs {
  Out o;
  const void* x; const uint4* qw; const void* scales; const uint8_t* zeros;
  int M, NP, K, KT, KGP, TN, G, stride_xm, split_k, stages;
};

// One ring slot, in uint4: [WARPS][2 tiles][32] weights, [WARPS][kSzChunks] scales/zeros, [BM][kXRow] x
template <int WARPS, int BM>
struct Slot {
  static constexpr int kW = WARPS * 64, kSz = WARPS * kSzChunks, kX = BM * kXRow;
  static constexpr int kSize = kW + kSz + kX;
};

// The contract's 16-bit weight pair from nibbles (0, 4) of v: ((M + q) - (M + z)) * s, each step exact
// but the last, which rounds as the contract does
template <typename T>
__device__ __forceinline__ uint32_t dq(uint32_t v, uint32_t mz, uint32_t s) {
  using H = Half16<T>;
  return H::mul2(H::sub2(lop3_magic<H::kMagic>(v), mz), s);
}

// The copies of one stage: every thread its x chunks; each warp its 16 rows' weights (lane l: chunk l
// of both 64-k tiles) and, on lanes 0-5, the scale/zero chunks (slot j = scales of tile j's group).
// Shared destinations are 32-bit offsets from the thread's chunks in slot 0, fixed for the kernel.
template <typename T, int WARPS, int BM>
struct Feed {
  static constexpr int kXRows = WARPS * 32 / 16;  // x rows one pass of the CTA's threads copies
  static constexpr int kXPasses = BM / kXRows;
  const uint4* wsrc;   // this lane's weight chunk at the next stage
  const char* szsrc;   // lanes < kSzChunks: this lane's scale or zero chunk at the next stage
  int szstep;          // bytes per stage of szsrc
  bool szlane;
  uint32_t wdst, szdst, xdst;  // slot 0's shared addresses of this thread's chunks (x: pass 0)
  int xrow, xcol;              // token row (pass 0) and element column of this thread's x chunks
  __device__ __forceinline__ void init(const MmaArgs& a, uint32_t base, int n0, int s_lo, int warp, int lane,
                                       bool active) {
    const int tn = n0 / a.TN, r0 = n0 % a.TN;
    wsrc = a.qw + (((long long)tn * a.KT + 2 * s_lo) * a.TN + r0) * 2 + lane;
    // group of tile j of stage s: 2s + j at G = 64, s at G = 128 (both tiles read the same chunk)
    const int j = lane < 4 ? lane >> 1 : lane - 4;
    const long long grp = (long long)tn * a.KGP + (a.G == 64 ? 2 * s_lo + j : s_lo);
    const int per = a.G == 64 ? 2 : 1;
    if (lane < 4) {
      szsrc = reinterpret_cast<const char*>(static_cast<const T*>(a.scales) + grp * a.TN + r0 + 8 * (lane & 1));
      szstep = per * a.TN * static_cast<int>(sizeof(T));
    } else {
      szsrc = reinterpret_cast<const char*>(a.zeros + grp * a.TN + r0);
      szstep = per * a.TN;
    }
    szlane = active && (lane < 4 || (lane < kSzChunks && a.zeros != nullptr));
    wdst = base + (warp * 64 + lane) * 16;
    szdst = base + (Slot<WARPS, BM>::kW + warp * kSzChunks + lane) * 16;
    xrow = threadIdx.x >> 4, xcol = 8 * (threadIdx.x & 15);
    xdst = base + (Slot<WARPS, BM>::kW + Slot<WARPS, BM>::kSz + xrow * kXRow + (threadIdx.x & 15)) * 16;
  }
  __device__ __forceinline__ void issue(const MmaArgs& a, uint32_t slot_off, int s, bool active) {
    if (active) {
      cp_async16_s(wdst + slot_off, wsrc);
      cp_async16_s(wdst + slot_off + 512, wsrc + (long long)a.TN * 2);
      wsrc += (long long)a.TN * 4;
    }
    if (szlane) cp_async16_s(szdst + slot_off, szsrc);
    szsrc += szstep;
    const T* x = static_cast<const T*>(a.x) + s * kStageK + xcol;
    const int tok0 = blockIdx.x * BM + xrow;
#pragma unroll
    for (int p = 0; p < kXPasses; ++p) {
      const int tok = min(tok0 + p * kXRows, a.M - 1);  // past M: a copy of the last token, never stored
      cp_async16_s(xdst + slot_off + p * kXRows * kXRow * 16, x + (long long)tok * a.stride_xm);
    }
  }
};

__device__ __forceinline__ void wait_ring(int stages) {  // cp.async.wait_group STAGES - 2
  if (stages == 3) cp_async_wait<1>();
  else if (stages == 4) cp_async_wait<2>();
  else cp_async_wait<3>();
}

// acc[nb] += W (16 rows) x X^T (token block nb) over one 128-k slot
template <typename T, int WARPS, int BM>
__device__ __forceinline__ void slot_mma(float (&acc)[BM / 8][4], const uint4* slot, bool asym, int warp, int g,
                                         int c) {
  using H = Half16<T>;
  constexpr int NB = BM / 8, CH = NB < 8 ? NB : 8;  // token blocks whose B registers are live at once
  const uint4* wt = slot + warp * 64;
  const uint4* sz = slot + Slot<WARPS, BM>::kW + warp * kSzChunks;
  const uint4* xs = slot + Slot<WARPS, BM>::kW + Slot<WARPS, BM>::kSz;
  constexpr uint32_t kM16 = H::kMagic & 0xFFFFu;
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const uint16_t* sc = reinterpret_cast<const uint16_t*>(sz + 2 * j);
    const uint32_t s_lo = sc[g] * 0x10001u, s_hi = sc[g + 8] * 0x10001u;
    const uint8_t* zc = reinterpret_cast<const uint8_t*>(sz + 4 + j);
    const uint32_t z_lo = asym ? zc[g] : 8u, z_hi = asym ? zc[g + 8] : 8u;
    const uint32_t mz_lo = (kM16 + z_lo) * 0x10001u, mz_hi = (kM16 + z_hi) * 0x10001u;
    const uint2 wl = reinterpret_cast<const uint2*>(wt + 32 * j)[g * 4 + c];
    const uint2 wh = reinterpret_cast<const uint2*>(wt + 32 * j)[(g + 8) * 4 + c];
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // steps 2h, 2h + 1: word h of each row, shifts 0/4 and 8/12
      const uint32_t lo = h ? wl.y : wl.x, hi = h ? wh.y : wh.x;
      uint32_t af[2][4];
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        af[u][0] = dq<T>(lo >> (8 * u), mz_lo, s_lo);
        af[u][1] = dq<T>(hi >> (8 * u), mz_hi, s_hi);
        af[u][2] = dq<T>(lo >> (8 * u + 4), mz_lo, s_lo);
        af[u][3] = dq<T>(hi >> (8 * u + 4), mz_hi, s_hi);
      }
#pragma unroll
      for (int nb0 = 0; nb0 < NB; nb0 += CH) {
        uint4 b[CH];  // k = 64j + 16c + 8h .. +7 of token nb*8 + g: steps 2h (x, y) and 2h + 1 (z, w)
#pragma unroll
        for (int i = 0; i < CH; ++i) b[i] = xs[((nb0 + i) * 8 + g) * kXRow + 8 * j + 2 * c + h];
        // the two steps of one accumulator CH MMAs apart (mma.sync is asm volatile: issued in this order)
#pragma unroll
        for (int i = 0; i < CH; ++i) H::mma(acc[nb0 + i], af[0], b[i].x, b[i].y);
#pragma unroll
        for (int i = 0; i < CH; ++i) H::mma(acc[nb0 + i], af[1], b[i].z, b[i].w);
      }
    }
  }
}

// Register caps: on sm_90a 128 for BM <= 64 (2 CTAs of 8 warps or 4 of 4 per SM, as shared memory
// allows at 3-4 stages; unbounded it took 68-111 and spilled nothing); the 128-token tile is one CTA
// per SM by its shared memory, so it takes what it wants (184-192). sm_80 and Blackwell, not here to
// tune on, get the compiler's allocation at one CTA (with no bound ptxas spilled 4-8 bytes at BM = 32
// on sm_80 and sm_100a).
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 900 || __CUDA_ARCH__ >= 1000)
#define TP_MMA_MIN_BLOCKS(WARPS, BM) 1
#else
#define TP_MMA_MIN_BLOCKS(WARPS, BM) ((BM) <= 64 ? 16 / (WARPS) : 1)
#endif
template <typename T, int WARPS, int BM>
__global__ void __launch_bounds__(WARPS * 32, TP_MMA_MIN_BLOCKS(WARPS, BM)) w4_mma_kernel(const MmaArgs a) {
  constexpr int NB = BM / 8;
  extern __shared__ uint4 smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  const int n0 = blockIdx.y * (WARPS * 16) + warp * 16;
  const bool active = n0 < a.NP;
  const int S = a.K / kStageK;
  const int per = (S + a.split_k - 1) / a.split_k;
  const int s_lo = min(S, static_cast<int>(blockIdx.z) * per), n_st = min(S, s_lo + per) - s_lo;
  const bool asym = a.zeros != nullptr;
  Feed<T, WARPS, BM> feed;
  feed.init(a, static_cast<uint32_t>(__cvta_generic_to_shared(smem)), active ? n0 : 0, s_lo, warp, lane, active);
  constexpr int kSlot = Slot<WARPS, BM>::kSize;
  constexpr uint32_t kSlotBytes = kSlot * 16;
  for (int s = 0; s < a.stages - 1; ++s) {
    if (s < n_st) feed.issue(a, s * kSlotBytes, s_lo + s, active);
    cp_async_commit();
  }
  float acc[NB][4];
#pragma unroll
  for (int t = 0; t < NB; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[t][i] = 0.f;
  int rd = 0, wr = a.stages - 1;
  for (int i = 0; i < n_st; ++i) {
    wait_ring(a.stages);
    __syncthreads();  // slot rd is complete for every thread, and every warp is done with slot wr
    if (i + a.stages - 1 < n_st) feed.issue(a, wr * kSlotBytes, s_lo + i + a.stages - 1, active);
    cp_async_commit();
    slot_mma<T, WARPS, BM>(acc, smem + rd * kSlot, asym, warp, g, c);
    rd = rd + 1 == a.stages ? 0 : rd + 1;
    wr = wr + 1 == a.stages ? 0 : wr + 1;
  }
  cp_async_wait<0>();
  store_tile_at<T, NB>(a.o, acc, n0, g, c, active, blockIdx.y * gridDim.x + blockIdx.x, a.split_k, blockIdx.x * BM);
}

template <typename T, int WARPS, int BM>
int launch(const MmaArgs& a, cudaStream_t s) {
  const int smem = a.stages * Slot<WARPS, BM>::kSize * static_cast<int>(sizeof(uint4));
  static int raised = 0;  // the largest dynamic shared memory allowed so far (one attribute call per size)
  if (smem > raised) {
    const cudaError_t e = cudaFuncSetAttribute(w4_mma_kernel<T, WARPS, BM>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               smem);
    if (e != cudaSuccess) return static_cast<int>(e);
    raised = smem;
  }
  const dim3 grid((a.M + BM - 1) / BM, (a.NP + WARPS * 16 - 1) / (WARPS * 16), a.split_k);
  w4_mma_kernel<T, WARPS, BM><<<grid, WARPS * 32, smem, s>>>(a);
  return static_cast<int>(cudaGetLastError());
}

// BM caps the token tile: a call with fewer tokens runs the smallest tile that covers them
template <typename T, int WARPS>
int by_bm(const MmaArgs& a, int bm, cudaStream_t s) {
  if (bm <= 32 || a.M <= 32) return launch<T, WARPS, 32>(a, s);
  if (bm <= 64 || a.M <= 64) return launch<T, WARPS, 64>(a, s);
  return launch<T, WARPS, 128>(a, s);
}

template <typename T>
int by_bn(const MmaArgs& a, int bn, int bm, cudaStream_t s) {
  if (bn == 256) return a.M <= 32 || bm == 32 ? launch<T, 16, 32>(a, s) : launch<T, 16, 64>(a, s);
  return bn == 64 ? by_bm<T, 4>(a, bm, s) : by_bm<T, 8>(a, bm, s);
}

}  // namespace

// y [M, N] = x [M, K] W^T (+ bias) for any M >= 1; dtype 0 = bf16, 1 = fp16 (x, scales, bias, y). bn: weight
// rows per CTA (64: 4 warps, 128: 8, 256: 16), bm: token tile (32, 64, 128; capped by M; 16 warps take at
// most 64: 128 tokens would need ~190 registers, over the 128 of 512 threads), stages: ring depth (3-5).
// Returns 0, -1 for bad arguments, else the CUDA error. split_k > 1 needs ws (fp32 [M*N], zeroed) and
// counters (int32, one per row tile x token tile, zeroed); both are left zeroed.
extern "C" int turbopack_w4_mma(const void* x, const void* qw, const void* scales, const void* zeros, const void* bias,
                                void* y, void* ws, void* counters, int M, int N, int NP, int K, int KT, int KGP, int TN,
                                int G, int stride_xm, int split_k, int bn, int bm, int stages, int dtype, void* stream) {
  if (M < 1 || K % kStageK != 0 || (G != 64 && G != 128) || TN % 16 != 0 || NP % 16 != 0 || stride_xm % 8 != 0 ||
      split_k < 1 || (bn != 64 && bn != 128 && bn != 256) || (bm != 32 && bm != 64 && bm != 128) ||
      (bn == 256 && bm == 128) || stages < 3 || stages > 5 ||
      (dtype != 0 && dtype != 1))
    return -1;
  const Out o{y, bias, nullptr, static_cast<float*>(ws), static_cast<int*>(counters), M, N, split_k, 0};
  const MmaArgs a{o, x, static_cast<const uint4*>(qw), scales, static_cast<const uint8_t*>(zeros), M, NP, K, KT, KGP,
                  TN, G, stride_xm, split_k, stages};
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  return dtype == 0 ? by_bn<__nv_bfloat16>(a, bn, bm, s) : by_bn<__half>(a, bn, bm, s);
}
