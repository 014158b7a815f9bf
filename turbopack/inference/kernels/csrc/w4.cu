// W4A16 kernels that read the w4_t{16,64}x64 layouts as packed (docs/layouts.md):
//   turbopack_w4_decode   M <= 16 tokens, tensor-core GEMV (the decode step); variant 0 = v5
//                         (w4_decode_kernel), 1 = v6 and 2 = v7 (w4_decode_v6_kernel, w4_v67.cuh), 3 = v8
//                         (w4_decode_v8_kernel, w4_v8.cuh: v7 on persistent stripes), 4 = rows (w4_rows_kernel,
//                         w4_rows.cuh: a CTA per 16 rows, K split among its warps, M <= 8), 6 = rows with x
//                         per stage (w4_rowsx_kernel, w4_rowsx.cuh: zeros out in the A registers, M <= 16)
//   turbopack_w4_dequant  packed codes -> 16-bit W [NP, K_pad] (prefill: then one cuBLAS GEMM; w4_dequant.cuh)
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
// issued instruction). This version: each warp streams its weights through a STAGES-deep cp.async
// ring in shared memory (private to the warp: lanes copy in memory order and read in fragment
// order behind a __syncwarp, no CTA barrier); scales and zeros go to registers one stage ahead;
// activations come from L1 (all warps of an SM read the same x); pointers advance by constants
// (no 64-bit multiply per stage); the per-tile accumulators make four short independent MMA
// chains (177 SASS instructions per stage for one token column and group 128, against 285 for
// the same loop with run-time group size, asymmetry and ring modulo). A third version put the
// contract's 16-bit weights in the A registers (HSUB2 + HMUL2 per register): exact, but two more
// instructions per two weights, and at 48% of bandwidth ncu showed the SM issue-bound (50%
// compute throughput at 13 warps/SM); the raw (M + q) operand plus one MMA against all-ones per
// step issues fewer instructions.
// K order inside the MMA: thread c of a quad takes bytes 8c..8c+7 of its two rows in each tile
// (k = 16c..16c+15 of the tile), pair p of those 16 k is word p>>2 shifted by 4(p&3), and its
// activations are the 16-bit pair at the same k, 32-bit word p of the thread's 32 bytes of x. A
// and B are permuted alike, so the MMA's sum over k is unchanged, and one MMA never mixes the two
// 64-wide tiles of a 128-wide stage (group 64 changes scale between them).
//
// Numerics: acc = sum (M + q) x and xs = sum x per tile (fp32, exact products), then per group
// y += s * acc - s * (M + z) * xs: exact (q - z) * s weights in fp32, which differs from the
// contract's 16-bit-rounded weight by that rounding only (~1e-3 relative).
#include <algorithm>

#include "common.cuh"
#include "w4_dequant.cuh"  // w4_dequant_kernel
#include "w4_stage.cuh"  // kWarps, kStageK, Stage, SzSlot, load_x, sum_x, weight_mma

namespace {

struct Args {
  Out o;
  const void* x; const uint4* qw; const void* scales; const uint8_t* zeros;
  int M, NP, K, KT, KGP, TN, G, stride_xm, split_k;
  // 16 bits each: Args stays 128 bytes (a 132-byte Args made ptxas spill v5 under its 64-register cap)
  int16_t prefetch;  // v7: 1 = the CTA's weight slice past the ring's first stages goes to L2 before pdl_wait
  int16_t act;       // rows with x per stage: 0, or kActSilu / kActGeluTanh: y = act(gate) * up of a fused gate|up
};

// cp.async of one stage: lane l copies 16-byte chunk l of each of the two tiles (the warp's 16 rows
// are 512 contiguous bytes per tile), no predicate, no zero-fill.
__device__ __forceinline__ void issue_stage(Stage& st, const uint4*& wsrc, long long tile_step, int lane) {
  cp_async16(&st.w[0][lane], wsrc);
  cp_async16(&st.w[1][lane], wsrc + tile_step);
  wsrc += 2 * tile_step;  // pointers advance by a constant: no 64-bit multiply per stage
}

// The scales (and zero points) of rows g and g + 8 for the NG groups of stage grp, into registers
// one stage ahead: 2-byte loads that the warp coalesces into one 32-byte sector per group.
template <typename T, int NG, bool ASYM>
struct GroupParams {
  float s[NG][2], z[NG][2];
  // ssrc/zsrc point at the stage's first group; the next group is TN elements on
  __device__ __forceinline__ void load(const T* ssrc, const uint8_t* zsrc, int TN) {
#pragma unroll
    for (int gi = 0; gi < NG; ++gi) {
      s[gi][0] = Half16<T>::to_f(__ldg(ssrc + gi * TN));
      s[gi][1] = Half16<T>::to_f(__ldg(ssrc + gi * TN + 8));
      z[gi][0] = ASYM ? static_cast<float>(__ldg(zsrc + gi * TN)) : 8.f;
      z[gi][1] = ASYM ? static_cast<float>(__ldg(zsrc + gi * TN + 8)) : 8.f;
    }
  }
};

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 900 || __CUDA_ARCH__ >= 1000)
// sm_80's and Blackwell's (sm_100a/sm_120a) allocations spill under the caps below; none of those
// parts is here to tune on, so they get the compiler's own allocation
#define TP_MIN_BLOCKS(NTOK, G) 1
#else
#define TP_MIN_BLOCKS(NTOK, G) ((NTOK) == 1 ? ((G) == 128 ? 8 : 6) : 1)
#endif
// Register cap (sm_90): 64 for one token column (8 CTAs = 32 warps per SM; ncu on 72 registers showed 13-23
// of 28 possible warps active and the kernel latency-bound), 80 for group 64 (two groups of
// scales per stage: 64 spilled), none for two token columns (a 128 cap spilled).
// G (64 or 128: one or two groups per 128-wide stage) and ASYM are compile-time: a first build with
// both at run time spent 285 SASS instructions per stage, ~40 of them on branches, ring-slot
// modulos and per-tile epilogues that a group-128 stage does not need.
template <typename T, int NTOK, int STAGES, int G, bool ASYM>
__global__ void __launch_bounds__(kWarps * 32, TP_MIN_BLOCKS(NTOK, G)) w4_decode_kernel(const Args a) {
  using H = Half16<T>;
  constexpr int NG = kStageK / G;
  extern __shared__ uint4 smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  Stage* ring = reinterpret_cast<Stage*>(smem) + warp * STAGES;
  const int n0 = blockIdx.x * (kWarps * 16) + warp * 16;  // first row of this warp
  const bool active = n0 < a.NP;
  const int stages = a.K / kStageK;
  const int per = (stages + a.split_k - 1) / a.split_k;
  const int s_lo = blockIdx.y * per, s_hi = active ? min(stages, s_lo + per) : s_lo;
  const int tn = n0 / a.TN, r0 = n0 % a.TN;
  // per-lane sources, hoisted: tile (tn, 0) of the warp's rows; scales/zeros of group 0
  const long long tile_step = (long long)a.TN * 2;  // uint4 per 64-wide tile
  const uint4* wsrc = a.qw + (((long long)tn * a.KT + 2 * s_lo) * a.TN + r0) * 2 + lane;  // next stage to issue
  const long long sz0 = ((long long)tn * a.KGP + s_lo * NG) * a.TN + r0 + g;  // group params of stage s_lo
  const T* ssrc = static_cast<const T*>(a.scales) + sz0;
  const uint8_t* zsrc = ASYM ? a.zeros + sz0 : nullptr;
  const int sz_step = NG * a.TN;
  const T* x = static_cast<const T*>(a.x);
  const uint4* xsrc[NTOK];
  bool has_tok[NTOK];  // a flag, not a null test: the pointers advance every stage, null ones too
#pragma unroll
  for (int t = 0; t < NTOK; ++t) {
    const int tok = 8 * t + g;
    has_tok[t] = tok < a.M;
    xsrc[t] = reinterpret_cast<const uint4*>(x + (long long)(has_tok[t] ? tok : 0) * a.stride_xm + s_lo * kStageK + 16 * c);
  }

  const uint32_t ones[4] = {H::kOnes, H::kOnes, H::kOnes, H::kOnes};
  float out[NTOK][4];
#pragma unroll
  for (int t = 0; t < NTOK; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) out[t][i] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s_lo + s < s_hi) issue_stage(ring[s], wsrc, tile_step, lane);
    cp_async_commit();
  }
  pdl_wait();  // the ring's first weights are on their way; x and y belong to the kernels around us
  GroupParams<T, NG, ASYM> cur;
  if (s_lo < s_hi) cur.load(ssrc, zsrc, a.TN);
  int rd = 0, wr = STAGES - 1;  // ring slots to read and to refill (no run-time modulo)
  for (int grp = s_lo; grp < s_hi; ++grp) {
    // activations: 32 bytes per tile of this thread's token, from L1 (every warp of the SM reads them)
    uint4 xv[NTOK][2][2];
#pragma unroll
    for (int t = 0; t < NTOK; ++t)
#pragma unroll
      for (int j = 0; j < 4; ++j)
        xv[t][j >> 1][j & 1] = has_tok[t] ? __ldg(xsrc[t] + 8 * (j >> 1) + (j & 1)) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int t = 0; t < NTOK; ++t) xsrc[t] += kStageK / 8;
    GroupParams<T, NG, ASYM> nxt;
    ssrc += sz_step;
    if (ASYM) zsrc += sz_step;
    if (grp + 1 < s_hi) nxt.load(ssrc, zsrc, a.TN);
    cp_async_wait<STAGES - 2>();
    __syncwarp();  // lane l copied bytes 16l.. (row l/2), read by that row's quad; and slot wr is free
    const int next = grp + STAGES - 1;
    if (next < s_hi) issue_stage(ring[wr], wsrc, tile_step, lane);
    cp_async_commit();
    wr = wr + 1 == STAGES ? 0 : wr + 1;
    const Stage& st = ring[rd];
    rd = rd + 1 == STAGES ? 0 : rd + 1;
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
    if (NG == 1) {
#pragma unroll
      for (int t = 0; t < NTOK; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[0][t][i] += acc[1][t][i], xs[0][t][i] += xs[1][t][i];
    }
#pragma unroll
    for (int gi = 0; gi < NG; ++gi) {
      const float sl = cur.s[gi][0], sh_ = cur.s[gi][1];
      const float ol = sl * (H::kBase + cur.z[gi][0]), oh = sh_ * (H::kBase + cur.z[gi][1]);
#pragma unroll
      for (int t = 0; t < NTOK; ++t) {
        out[t][0] = fmaf(sl, acc[gi][t][0], fmaf(-ol, xs[gi][t][0], out[t][0]));
        out[t][1] = fmaf(sl, acc[gi][t][1], fmaf(-ol, xs[gi][t][1], out[t][1]));
        out[t][2] = fmaf(sh_, acc[gi][t][2], fmaf(-oh, xs[gi][t][2], out[t][2]));
        out[t][3] = fmaf(sh_, acc[gi][t][3], fmaf(-oh, xs[gi][t][3], out[t][3]));
      }
    }
    cur = nxt;
  }
  cp_async_wait<0>();
  store_tile<T, NTOK>(a.o, out, n0, g, c, active);
}

}  // namespace

// the other decode variants, on v5's Args, GroupParams and register caps above
#include "w4_v67.cuh"  // w4_decode_v6_kernel (v6, v7), xsum_bytes, kXsumMax
#include "w4_v8.cuh"   // w4_decode_v8_kernel

namespace {

// The kernels with a thread-block cluster store (v7's CL): one token column, rings 4 and 6 (what the
// tuner offers it at), so the other instantiations compile as before
template <int NTOK, int STAGES>
constexpr bool kClusterBuilt = NTOK == 1 && STAGES <= 6;

// cluster (v7): the split-K CTAs of a row tile as one thread-block cluster (common.cuh
// cluster_sum), where kClusterBuilt; else, and in every fallback, the global split-K path
template <typename T, int NTOK, int STAGES, int G, bool ASYM, int VAR>
int launch_decode(const Args& a, cudaStream_t s, bool cluster_req) {
  constexpr int NG = kStageK / G;
  constexpr int ring = kWarps * STAGES * static_cast<int>(sizeof(Stage) + (VAR == 2 ? sizeof(SzSlot<NG, ASYM>) : 0));
  const int per = (a.K / kStageK + a.split_k - 1) / a.split_k;
  int table = 0;
  bool cluster = false;
  void (*kern)(const Args);
  if constexpr (VAR >= 1) {
    table = xsum_bytes(per, NG, NTOK);
    if (table > kXsumMax) return launch_decode<T, NTOK, (STAGES > 6 ? 6 : STAGES), G, ASYM, 0>(a, s, false);
    if (VAR == 2 && (reinterpret_cast<uintptr_t>(a.scales) % 16 != 0 || reinterpret_cast<uintptr_t>(a.zeros) % 16 != 0))
      return launch_decode<T, NTOK, STAGES, G, ASYM, 1>(a, s, false);  // v7's 16-byte scale copies need aligned rows
    kern = w4_decode_v6_kernel<T, NTOK, STAGES, G, ASYM, VAR == 2, false>;
    if constexpr (VAR == 2 && kClusterBuilt<NTOK, STAGES>) {
      cluster = cluster_req && a.split_k > 1;
      if (cluster) kern = w4_decode_v6_kernel<T, NTOK, STAGES, G, ASYM, true, true>;
    }
  } else {
    kern = w4_decode_kernel<T, NTOK, STAGES, G, ASYM>;
  }
  static bool raised[2] = {false, false}, wide = false;  // one attribute call per kernel (not a per-launch cost)
  if (!raised[cluster]) {
    const int most = ring + (VAR >= 1 ? kXsumMax : 0);  // a cap, not a reservation: occupancy follows the launch's
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, most);
    if (e != cudaSuccess) return static_cast<int>(e);
    raised[cluster] = true;
  }
  if (cluster) {
    const cudaError_t e = allow_cluster(kern, a.split_k, wide);
    if (e != cudaSuccess) return static_cast<int>(e);
  }
  const dim3 grid((a.NP + kWarps * 16 - 1) / (kWarps * 16), a.split_k), block(kWarps * 32);
  return static_cast<int>(launch_with(kern, grid, block, ring + table, s, Launch{g_pdl != 0, cluster ? a.split_k : 1}, a));
}

// Attribute A of the current device, 0 where it cannot be read (cached per device: a launch must not
// query the driver each time)
template <cudaDeviceAttr A>
int device_attr() {
  static int cached[64] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 0;
  if (cached[dev] == 0 && cudaDeviceGetAttribute(&cached[dev], A, dev) != cudaSuccess) cached[dev] = 0;
  return cached[dev];
}

int sm_count() { return device_attr<cudaDevAttrMultiProcessorCount>(); }

// a with cuda_w4.default_split's K split (about three CTAs of 64 rows per SM, >= 4 stages each): v7's
// arguments where v8 or rows fall back to it
Args at_default_split(const Args& a, int sms) {
  const int S = a.K / kStageK, tiles = (a.NP + kWarps * 16 - 1) / (kWarps * 16);
  Args b = a;
  b.split_k = std::max(1, std::min((3 * sms + tiles - 1) / tiles, std::max(1, S / 4)));
  b.o.split_k = b.split_k;
  return b;
}

// v8: a.split_k is CTAs per SM (0: as many as fit, cudaOccupancyMaxActiveBlocksPerMultiprocessor).
// The table is sized for the launch's stripes (min(ceil(W/grid), S) entries); occupancy is asked with
// the bound for any grid >= min(W, SMs) (a launch with less shared memory only fits more CTAs).
template <typename T, int NTOK, int STAGES, int G, bool ASYM>
int launch_v8(const Args& a, cudaStream_t s) {
  constexpr int NG = kStageK / G;
  constexpr int ring = kWarps * STAGES * static_cast<int>(sizeof(Stage) + sizeof(SzSlot<NG, ASYM>));
  const int S = a.K / kStageK, tiles = (a.NP + kWarps * 16 - 1) / (kWarps * 16);
  const long long items = (long long)tiles * S;
  const int sms = sm_count();
  if (sms <= 0) return -4;
  const long long bound = std::min<long long>(S, (items + std::min<long long>(items, sms) - 1) / std::min<long long>(items, sms));
  if (xsum_bytes(static_cast<int>(bound), NG, NTOK) > kXsumMax || reinterpret_cast<uintptr_t>(a.scales) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(a.zeros) % 16 != 0) {  // v7 at the split rule of cuda_w4.default_split
    return launch_decode<T, NTOK, STAGES, G, ASYM, 2>(at_default_split(a, sms), s, false);
  }
  void (*kern)(const Args) = w4_decode_v8_kernel<T, NTOK, STAGES, G, ASYM>;
  static bool raised = false;
  static int occ_smem = -1, occ = 0, occ_dev = -1;  // the last occupancy query, by shared memory and device
  int dev = 0;
  cudaGetDevice(&dev);
  if (!raised) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, ring + kXsumMax);
    if (e != cudaSuccess) return static_cast<int>(e);
    raised = true;
  }
  const int smem_bound = ring + xsum_bytes(static_cast<int>(bound), NG, NTOK);
  if (smem_bound != occ_smem || dev != occ_dev) {
    cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kern, kWarps * 32, smem_bound);
    if (e != cudaSuccess) return static_cast<int>(e);
    occ_smem = smem_bound, occ_dev = dev;
  }
  const int per_sm = std::max(1, a.split_k > 0 ? std::min(a.split_k, occ) : occ);
  const long long grid = std::min<long long>(items, (long long)sms * per_sm);
  const int entries = static_cast<int>(std::min<long long>(S, (items + grid - 1) / grid));
  return static_cast<int>(launch_kernel(kern, dim3(static_cast<unsigned>(grid)), dim3(kWarps * 32),
                                 ring + xsum_bytes(entries, NG, NTOK), s, a));
}

// ring depths: v5 4 and 6 (what it was tuned with), v6 and v7 also 8 (their 64-register cap holds at 8)
template <typename T, int NTOK, int G, bool ASYM>
int by_stages(const Args& a, int stages, int variant, bool cluster, cudaStream_t s) {
  if (variant == 1) {
    switch (stages) {
      case 4: return launch_decode<T, NTOK, 4, G, ASYM, 1>(a, s, cluster);
      case 6: return launch_decode<T, NTOK, 6, G, ASYM, 1>(a, s, cluster);
      case 8: return launch_decode<T, NTOK, 8, G, ASYM, 1>(a, s, cluster);
      default: return -2;
    }
  }
  if (variant == 2) {
    switch (stages) {
      case 4: return launch_decode<T, NTOK, 4, G, ASYM, 2>(a, s, cluster);
      case 6: return launch_decode<T, NTOK, 6, G, ASYM, 2>(a, s, cluster);
      case 8: return launch_decode<T, NTOK, 8, G, ASYM, 2>(a, s, cluster);
      default: return -2;
    }
  }
  if (variant == 3) {
    switch (stages) {
      case 4: return launch_v8<T, NTOK, 4, G, ASYM>(a, s);
      case 6: return launch_v8<T, NTOK, 6, G, ASYM>(a, s);
      default: return -2;
    }
  }
  if (variant != 0) return -3;
  switch (stages) {
    case 4: return launch_decode<T, NTOK, 4, G, ASYM, 0>(a, s, cluster);
    case 6: return launch_decode<T, NTOK, 6, G, ASYM, 0>(a, s, cluster);
    default: return -2;
  }
}

template <typename T, int NTOK>
int by_group(const Args& a, int stages, int variant, bool cluster, cudaStream_t s) {
  const bool asym = a.zeros != nullptr;
  if (a.G == 128)
    return asym ? by_stages<T, NTOK, 128, true>(a, stages, variant, cluster, s)
                : by_stages<T, NTOK, 128, false>(a, stages, variant, cluster, s);
  return asym ? by_stages<T, NTOK, 64, true>(a, stages, variant, cluster, s)
              : by_stages<T, NTOK, 64, false>(a, stages, variant, cluster, s);
}

}  // namespace

// the decode by rows, on v5's Args and v7 (by_group) as its fallback
#include "w4_rows.cuh"  // by_rows: w4_rows_kernel (VARIANT 4 and 5)
#include "w4_rowsx.cuh"  // by_rows_x: w4_rowsx_kernel (VARIANT 6)

namespace {

template <typename T>
int by_tokens(const Args& a, const Fold& f, int stages, int variant, bool cluster, cudaStream_t s) {
  if (variant == 4 || variant == 5) return by_rows<T>(a, stages, variant, s);
  if (variant == kRowsX) return by_rows_x<T>(a, f, stages, s);
  return a.M <= 8 ? by_group<T, 1>(a, stages, variant, cluster, s) : by_group<T, 2>(a, stages, variant, cluster, s);
}

}  // namespace

// dtype: 0 = bf16, 1 = fp16 (activations, scales, bias and y alike). cluster (v7, split_k <= 16, sm_90+):
// the split-K CTAs of a row tile reduce in a thread-block cluster (common.cuh cluster_sum), not
// through ws/counters (which a fallback to v5/v6 still uses). Returns 0 or an error code: -1 bad arguments, -2
// unsupported STAGES, -3 unknown variant (0 = v5, 1 = v6, 2 = v7, 3 = v8, 4 = rows, 5 = rows of 64, 6 = rows with x
// per stage), -4 no SM count, else the CUDA error. act (VARIANT 6, no bias, N % 32 == 0): the fused gate|up's GLU, y [M, N / 2] =
// act(gate) * up with act 1 = SiLU, 2 = GeLU-tanh (w4_rowsx.cuh), in one launch. v8 reads split_k as CTAs per SM (0: as many as fit) and needs ws/counters sized for split-K (any
// tile may be shared by several stripes); rows reads it as warps per CTA (8 or 16) and needs no ws/counters.
// fold_* (VARIANT 6; rows_store.cuh Fold): a producer's residual res, norm weight w, new residual r_out and
// partial sums ss [M, NP / 16] (y is then the norm's z); or a consumer's partials ss_in [M, parts]
// (parts % 4 == 0, <= 512) and eps (x is a producer's z). All null: no fold.
extern "C" int turbopack_w4_decode(const void* x, const void* qw, const void* scales, const void* zeros,
                                   const void* bias, void* y, void* ws, void* counters, int M, int N, int NP,
                                   int K, int KT, int KGP, int TN, int G, int stride_xm, int split_k, int stages,
                                   int variant, int prefetch, int cluster, int act, const void* fold_res,
                                   const void* fold_w, void* fold_r_out, void* fold_ss, const void* fold_ss_in,
                                   float fold_eps, int fold_parts, int dtype, void* stream) {
  const Fold f{fold_res, fold_w, fold_r_out, static_cast<float*>(fold_ss), static_cast<const float*>(fold_ss_in),
               fold_eps, fold_parts};
  if (!fold_ok(f, M, N, act, variant == kRowsX)) return -1;
  if (M < 1 || M > 16 || K % kStageK != 0 || (G != 64 && G != 128) || TN % 16 != 0 || NP % 16 != 0 ||
      stride_xm % 8 != 0 || split_k < (variant == 3 ? 0 : 1) || (dtype != 0 && dtype != 1) ||
      (cluster && (variant != 2 || split_k > 16)) || act < 0 || act > kActGeluTanh ||
      (act && (variant != kRowsX || bias != nullptr || N % 32 != 0)))
    return -1;
  // GLU (act): y [M, N / 2] = act(rows 0..N/2) * (rows N/2..N) of the fused gate|up
  const Out o{y, bias, nullptr, static_cast<float*>(ws), static_cast<int*>(counters), M, act ? N / 2 : N, split_k, 0};
  const Args a{o, x, static_cast<const uint4*>(qw), scales, static_cast<const uint8_t*>(zeros), M, NP, K, KT, KGP, TN,
               G, stride_xm, split_k, static_cast<int16_t>(prefetch != 0), static_cast<int16_t>(act)};
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  return dtype == 0 ? by_tokens<__nv_bfloat16>(a, f, stages, variant, cluster != 0, s)
                    : by_tokens<__half>(a, f, stages, variant, cluster != 0, s);
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
