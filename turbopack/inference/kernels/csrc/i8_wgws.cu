// W8A8 on Hopper (sm_90a), warp-specialized: turbopack_i8_wgws. y [M, N] = (xq . W^T) * sx[token] *
// sw[row] (+ bias) from the i8_rowmajor codes (W [NP, KP] int8, row-major, K padded to 16) and per-token
// int8 activations (xq [M, KP], w8a8.py's quant_rows_kernel), int32 accumulation on the tensor core:
// wgmma m64nNk32 s8, twice the 16-bit rate. Run 29's ncu of the Triton int8 GEMM (qkv, M = 256) found
// one CTA an SM, 0.73 waves and the issue slots 17% busy, barrier stalls first: every warp both
// copied and multiplied. Here, as in w4_wgws.cu:
//   - one thread of the producer warpgroup issues a stage as two tiled tensor-map copies (TMA,
//     cp.async.bulk.tensor.2d): the CTA's 128 weight rows x 128 k and its BM tokens x 128 k. The
//     TMA unit writes each box in the 128-byte swizzle that desc_k128 describes (a row of 128 int8 k,
//     16-byte chunks XORed with the row mod 8), so the row-major layout needs no offline permutation,
//     and it zero-fills what lies past N, M or K: no padding buffers, no masks;
//   - two consumer warpgroups (weight rows 64 h .. 64 h + 63: wgmma's A, 64 x 32 a step; the tokens
//     B, N = BM) only wait on a stage's `full` barrier, issue its four k32 steps as one commit group
//     and release the previous stage on its `empty` barrier once wgmma.wait_group 1 says its group has
//     completed. Both operands come from shared memory, so nothing is decoded and no register is
//     shared with an in-flight group (unlike w4_wgws.cu's A fragments).
// CLUSTER (a.cluster): the split_k CTAs of a tile (its K slices) are one thread-block cluster along z
// and sum their partials through distributed shared memory (common.cuh cluster_reduce, in the idle ring):
// no workspace, counter or global round trip. Run 31 measured the global planes costing ~11 us a split
// at a 128 x 256 tile (the last CTA alone reads every plane back), more than a split saved. (Run 30's
// CLUSTER, x multicast to pairs of row tiles, lost 1-20% everywhere in run 31: removed.)
// The epilogue turns the int32 sums into fp32 times the two scales and stores them through
// ws_store.cuh's store_rows (split 1, CLUSTER) or store_sliced_rows (split-K by planes): warp w
// of the CTA holds rows 16 w + g (+ 8), tokens 8 t + 2 c (+ 1), the wgmma accumulator layout (wgmma.cuh).
#include "tma.cuh"
#include "w4_mma.cuh"
#include "wgmma.cuh"
#include "ws_store.cuh"

namespace {

constexpr int kI8StageK = 128;   // int8 k per stage: one 128-byte swizzled row
constexpr int kI8Rows = 128;     // weight rows a CTA: two consumer warpgroups of 64
constexpr int kI8Threads = 384;  // consumer warpgroups 0, 1; producer warpgroup 2

template <int BM>
struct I8Slot {
  static constexpr int kW = kI8Rows * kI8StageK, kX = BM * kI8StageK;
  static constexpr int kSize = kW + kX;  // a multiple of 1024 (the swizzle's 8-row period), so every box is aligned
};

struct I8Args {
  Out o;
  const float* sx;  // [M] per-token scales
  const float* sw;  // [N] per-row scales, or one per tensor (sw_stride 0)
  int M, N, KP, split_k, stages, sw_stride;
};

// The codes: int8 (W8A8, i8_rowmajor: s32 sums, exact) or float8 e4m3 (FP8, fp8_rowmajor: f32 sums);
// both one byte a code, K-major, at the same wgmma rate, so everything but the MMA (wgmma.cuh Wgmma8,
// by the accumulators' type) is shared
enum : int { kCodeS8 = 0, kCodeE4M3 = 1 };

template <typename T, int CODE, int BM>
__global__ void __launch_bounds__(kI8Threads, 1)
    i8_wgws_kernel(const __grid_constant__ CUtensorMap wmap, const __grid_constant__ CUtensorMap xmap, const I8Args a) {
#ifdef TP_WGMMA
  using S = I8Slot<BM>;
  extern __shared__ uint4 smem_raw[];
  const uint32_t base = (static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) + 1023) & ~1023u;
  const uint32_t full = base + a.stages * S::kSize, empty = full + 8 * a.stages;  // mbarriers, 8 bytes each
  const uint32_t xs = empty + 8 * a.stages;  // the CTA's BM token scales (zero past M), for the epilogue
  const int row0 = blockIdx.y * kI8Rows, tok0 = blockIdx.x * BM, tile = blockIdx.y * gridDim.x + blockIdx.x;
  const int S_all = (a.KP + kI8StageK - 1) / kI8StageK, per = (S_all + a.split_k - 1) / a.split_k;
  const int s_lo = min(S_all, static_cast<int>(blockIdx.z) * per), n_st = min(S_all, s_lo + per) - s_lo;
  ring_init(full, empty, a.stages);
  const bool cl = a.split_k > 1 && in_cluster_of(a.split_k);  // the K slices sum in their cluster
  if (threadIdx.x >= 256) {  // the producer warpgroup: one thread copies, the rest only meet the split-K barriers
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (threadIdx.x == 256) {
      const uint64_t policy = l2_evict_first();  // the weights stream once; x is re-read by every row tile
      constexpr bool cw = (kKnockout & kKoLoad) == 0, cx = (kKnockout & kKoX) == 0;
      constexpr uint32_t kBytes = (cw ? S::kW : 0) + (cx ? S::kX : 0);
      // PDL (pdl.py): the first ring's weights are copied before the wait (no kernel writes them), the
      // codes of x, which the quantizer before this grid writes, after it
      const int pre = min(n_st, a.stages);
      for (int i = 0; i < pre; ++i) {
        const uint32_t bar = full + 8 * i;
        mbar_expect_tx(bar, kBytes);  // zero-filled bytes past the edges count too
        if (cw) tma_load_2d_hint(base + i * S::kSize, &wmap, (s_lo + i) * kI8StageK, row0, bar, policy);
      }
      pdl_wait();
      RingPos p;
      for (int i = 0; i < n_st; ++i, p.next(a.stages)) {
        const int k = (s_lo + i) * kI8StageK;
        const uint32_t slot = base + p.slot * S::kSize, bar = full + 8 * p.slot;
        if (i >= pre) {  // i >= stages: the slot's previous pass must be released
          mbar_wait(empty + 8 * p.slot, p.phase ^ 1);
          mbar_expect_tx(bar, kBytes);
          if (cw) tma_load_2d_hint(slot, &wmap, k, row0, bar, policy);
        }
        if (cx) tma_load_2d(slot + S::kW, &xmap, k, tok0, bar);
      }
    }
    pdl_wait();  // every thread, before it exits: completion stays ordered along the chain
    if (cl) cluster_sync_all(), cluster_sync_all();  // cluster_reduce's two cluster barriers
    else if (a.split_k > 1) (void)arrive_last(a.o, tile, a.split_k);  // store_sliced_rows' two CTA barriers
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const uint32_t a_off = (warp >> 2) * 64 * kI8StageK;  // this warpgroup's 64 weight rows in a slot
  using Acc = std::conditional_t<CODE == kCodeE4M3, float, int32_t>;
  Acc acc[BM / 2];  // the first wgmma writes them (scale-d 0)
  RingPos p;
  for (int i = 0, prev = 0; i < n_st; ++i, prev = p.slot, p.next(a.stages)) {  // prev: stage i - 1's slot
    const uint32_t slot = base + p.slot * S::kSize;
    mbar_wait(full + 8 * p.slot, p.phase);
    wg_fence();
    if constexpr ((kKnockout & kKoMath) == 0)
#pragma unroll
      for (int u = 0; u < 4; ++u)
        Wgmma8<Acc, BM>::run(i > 0 || u > 0, acc, desc_k128(slot + a_off + 32 * u), desc_k128(slot + S::kW + 32 * u));
    wg_commit();
    wg_wait<1>();  // stage i - 1's group has completed: its slot is free
    if (i > 0 && lane == 0) mbar_arrive(empty + 8 * prev);
  }
  wg_wait<0>();
  pdl_wait();  // returns at once (the x copies came after the producer's); before sx and any store
  if (threadIdx.x < BM) {
    const int tok = tok0 + threadIdx.x;
    asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(xs + 4 * threadIdx.x), "f"(tok < a.M ? a.sx[tok] : 0.f) : "memory");
  }
  asm volatile("bar.sync 1, 256;\n" ::: "memory");  // the consumer warpgroups only: xs is written
  if constexpr ((kKnockout & kKoEpilogue) != 0) {
#pragma unroll
    for (int j = 0; j < BM / 2; ++j) pin(acc[j]);
    return;
  }
  // CLUSTER: the K slices' int32 sums (exact) in their cluster, through the ring (idle: every stage was
  // waited for and both warpgroups passed wg_wait<0> before the barrier above), on the warps that
  // cluster_reduce assigns this rank; the scales then apply once
  bool mine = true;
  if (cl) {
#pragma unroll
    for (int j = 0; j < BM / 2; ++j) {
      pin(acc[j]);
      if (n_st == 0) acc[j] = 0;  // an empty K slice (split-K past the stages) holds no sums
    }
    pdl_trigger();
    mine = cluster_reduce<1, BM / 8>(reinterpret_cast<Acc(&)[1][BM / 8][4]>(acc), a.split_k,
                                     ring_scratch(smem_raw, base) + warp * (BM / 8) * 32);
  }
  const int n0 = row0 + 16 * warp;
  const float sw_lo = n0 + g < a.N ? a.sw[(n0 + g) * a.sw_stride] : 0.f,
              sw_hi = n0 + g + 8 < a.N ? a.sw[(n0 + g + 8) * a.sw_stride] : 0.f;
  float out[1][BM / 8][4];
#pragma unroll
  for (int t = 0; t < BM / 8; ++t) {
    // tokens 8 t + 2 c and + 1 from shared memory, one LDS.64 a column (global loads here were all
    // hoisted above the wait by ptxas and spilled at BM = 256)
    float2 sx;
    asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];\n" : "=f"(sx.x), "=f"(sx.y) : "r"(xs + 4 * (8 * t + 2 * c)));
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      pin(acc[4 * t + e]);
      // an empty K slice (split-K past the stages) holds no sums
      out[0][t][e] = n_st == 0 && !cl
                         ? 0.f
                         : static_cast<float>(acc[4 * t + e]) * ((e >> 1) ? sw_hi : sw_lo) * ((e & 1) ? sx.y : sx.x);
    }
  }
  // the ring is idle (every consumer passed wg_wait<0> before the barrier above; CLUSTER: both of
  // cluster_reduce's barriers passed), so each warp stages its rows in its share of it (ws_store.cuh)
  static_assert(8 * rows_bytes(1, BM) <= 3 * S::kSize, "every warp's staged rows fit the shallowest ring");
  const uint32_t stage = base + warp * rows_bytes(1, BM);
  if (cl) {
    if (mine) store_rows<T, 1, BM / 8>(a.o, out, stage, n0, tok0);
  } else if (a.split_k == 1) {
    store_rows<T, 1, BM / 8>(a.o, out, stage, n0, tok0);
  } else {
    store_sliced_rows<T, 1, BM / 8>(a.o, out, stage, n0, tok0, tile, gridDim.x * gridDim.y);
  }
#endif
}

template <int BM>
constexpr int smem_bytes(int stages) {
  return stages * I8Slot<BM>::kSize + 1024 + 16 * stages + 4 * BM;  // + the alignment, the barriers, the token scales
}

template <typename T, int CODE, int BM>
int launch(const I8Args& a, const void* xq, const void* w, int NP, int stride_xq, bool cluster, cudaStream_t s) {
  const int smem = smem_bytes<BM>(a.stages);
  if (smem > kSmemMax) return -1;
  CUtensorMap wmap, xmap;
  if (!row_map_128b(&wmap, w, 1, NP, a.KP, a.KP, kI8Rows) || !row_map_128b(&xmap, xq, 1, a.M, a.KP, stride_xq, BM))
    return -1;
  const int cl = cluster && a.split_k > 1 ? a.split_k : 1;
  if (!cluster_fits(cl, BM / 8, a.stages * I8Slot<BM>::kSize)) return -1;
  static int raised = 0;  // the largest dynamic shared memory allowed so far (one attribute call per size)
  if (smem > raised) {
    const cudaError_t e =
        cudaFuncSetAttribute(i8_wgws_kernel<T, CODE, BM>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return static_cast<int>(e);
    raised = smem;
  }
  const dim3 grid((a.M + BM - 1) / BM, (NP + kI8Rows - 1) / kI8Rows, a.split_k);
  return static_cast<int>(launch_with(i8_wgws_kernel<T, CODE, BM>, grid, dim3(kI8Threads), smem, s,
                                      Launch{g_pdl != 0, 1, cl}, wmap, xmap, a));
}

template <typename T, int CODE>
int by_tile(const I8Args& a, int bm, const void* xq, const void* w, int NP, int stride_xq, bool cl, cudaStream_t s) {
  if (bm == 256) return launch<T, CODE, 256>(a, xq, w, NP, stride_xq, cl, s);
  if (bm == 128) return launch<T, CODE, 128>(a, xq, w, NP, stride_xq, cl, s);
  if (bm == 64) return launch<T, CODE, 64>(a, xq, w, NP, stride_xq, cl, s);
  return -1;
}

}  // namespace

// y [M, N] = (xq W^T) * sx * sw (+ bias) on sm_90a; dtype 0 = bf16, 1 = fp16 (bias, y); code 0 = int8
// (i8_rowmajor), 1 = e4m3 (fp8_rowmajor). xq: codes [M, KP] with stride_xq bytes a row; w: codes [NP, KP];
// sx [M], sw [N] float32 (sw_stride 1; 0: one scale for the tensor); KP and stride_xq multiples of 16,
// xq and w 16-byte aligned. bm: tokens a CTA, 64, 128 or 256; stages from 3 to what fits 227 KB of
// shared memory (4 at bm = 256, 7 at 128, 9 at 64). split_k > 1: cluster 1 sums the K slices in a cluster (split_k <= 8), cluster 0
// through ws (fp32 [split_k x tiles x 128 x bm]) and counters (int32, one per row tile x token tile, zeroed, left
// zeroed). Returns 0, -1 for
// bad arguments, else the CUDA error (the kernel is empty unless built for sm_90a).
extern "C" int turbopack_i8_wgws(const void* xq, const void* sx, const void* w, const void* sw, const void* bias,
                                 void* y, void* ws, void* counters, int M, int N, int NP, int KP, int stride_xq,
                                 int split_k, int bm, int stages, int cluster, int dtype, int code, int sw_stride,
                                 void* stream) {
  if (M < 1 || N < 1 || NP < N || KP % 16 != 0 || stride_xq % 16 != 0 || split_k < 1 || stages < 3 ||
      (cluster != 0 && cluster != 1) || (dtype != 0 && dtype != 1) || (code != kCodeS8 && code != kCodeE4M3) ||
      (sw_stride != 0 && sw_stride != 1) || reinterpret_cast<uintptr_t>(xq) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(w) % 16 != 0)
    return -1;
  const Out o{y, bias, nullptr, static_cast<float*>(ws), static_cast<int*>(counters), M, N, split_k, 0};
  const I8Args a{o, static_cast<const float*>(sx), static_cast<const float*>(sw), M, N, KP, split_k, stages,
                 sw_stride};
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const bool cl = cluster != 0;
  if (code == kCodeE4M3)
    return dtype == 0 ? by_tile<__nv_bfloat16, kCodeE4M3>(a, bm, xq, w, NP, stride_xq, cl, s)
                      : by_tile<__half, kCodeE4M3>(a, bm, xq, w, NP, stride_xq, cl, s);
  return dtype == 0 ? by_tile<__nv_bfloat16, kCodeS8>(a, bm, xq, w, NP, stride_xq, cl, s)
                    : by_tile<__half, kCodeS8>(a, bm, xq, w, NP, stride_xq, cl, s);
}
