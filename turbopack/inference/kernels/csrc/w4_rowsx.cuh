// The dense W4A16 decode by rows with x read per stage (turbopack_w4_decode VARIANT 6; w4.cu includes it
// after w4_rows.cuh, whose v7 fallback it shares). M <= 16 tokens in one or two MMA token columns.
// Why a second rows kernel: the first (w4_rows.cuh) multiplies the raw (M + q) codes and removes
// (M + z) * sum x per group afterwards, so every warp stages x's rows of its K slice and sums them per
// token before its loop. That prologue grows with M: at M = 8 gate_up took 78.8 us against v7's 28.2
// (run 16), and v7's M = 16 costs 1.6x its M = 1 (run 11). The 8-bit rows kernel (w8.cu), which stages
// nothing and reads x from L1 stage by stage, keeps its M = 16 within 10% of its M = 1 (run 16). This
// kernel is that structure for W4 codes:
//   - the ring, its scale/zero chunks and the weight copies before pdl_wait are w4_rows.cuh's (DnFeed's
//     sources, to fixed shared addresses: SharedFeed);
//   - x's fragments come from L1 per stage (load_x, read before the ring's wait so the load overlaps it);
//   - the zero point leaves in the A registers: lop3 makes the pair (M + q) and one HSUB2 of (M + z)
//     leaves q - z, exact (|q - z| <= 15 in a 16-bit float), so the MMA sums (q - z) x and a group's
//     epilogue is out += s * acc (fp32): no sums of x, no staged x, no tables. One instruction more
//     per register pair than the raw codes (run 3's "HSUB2 + HMUL2" form was two, and applied the
//     scale in 16 bits); the scale stays in fp32, so y is the contract's up to fp32 summation order;
//   - the warps' sums meet in their drained rings in warp order and the first 16 * M threads store y
//     (w8.cu's w8_rows_kernel): no workspace, counter or last CTA, the same bits run to run;
//   - GLU (Args::act, a fused gate|up of 2I rows): a CTA takes rows n0.. of gate and of up (n0 + I),
//     half its warps each, and stores act(gate) * up for its 16 rows of h [M, I]: the MLP's SiLU-mul
//     launch (kernels.glue.act_mul) folds into this store, and gate|up's output never reaches memory.
//   - a fold (rows_store.cuh Fold): as o_proj or down, the store adds the residual and writes the next
//     RMSNorm's input (z, the new residual, each CTA's sum of squares); as q|k|v or gate|up, x is that
//     z and the store scales by the token's 1 / rms. The add_rmsnorm launch between them is gone.
#pragma once
#include "common.cuh"
#include "rows_store.cuh"  // rows_store, glu_store, the norm fold
#include "w4_feed.cuh"  // Lin, Feed, DnSlot, ring_prologue, ring_pass_x
#include "w4_stage.cuh"  // Stage, SzSlot, load_x, stage_qz

namespace {

constexpr int kRowsX = 6;  // the VARIANT

// A ring slot starts on a 128-byte row of shared memory. Unaligned (DnSlot's bytes, 1072 at group 128,
// asym) most slots start off a row, and each 256-byte LDS.64 of a stage's weights takes three
// wavefronts where two do (ncu, run 21: 40% more shared wavefronts than ideal). At 128 a slot is 1152
// bytes, 7.5% more shared memory, and the 8B W4 step ran 3.0% / 2.4% faster at batch 1 / 8 (H200,
// run 23, benchmarks/device/build_ab.py). -DTP_ROWSX_SLOT_ALIGN=16 builds the old slots (the A/B).
#ifndef TP_ROWSX_SLOT_ALIGN
#define TP_ROWSX_SLOT_ALIGN 128
#endif
template <int NG, bool ASYM>
using RowsXSlot = AlignedSlot<DnSlot<NG, ASYM>, TP_ROWSX_SLOT_ALIGN>;

// The warp's feed into its ring: DnFeed's sources, L2 hint and chunk lanes, to 32-bit shared addresses
// fixed at the start (slot s is s * sizeof(Slot) past slot 0, as v7's issue), not a generic -> shared
// conversion per copy. Under the 64-register cap the compiler still recomputes the lane's offsets
// when it refills a slot (S2R, LDC): the stage loop, not unrolled, was 188 SASS instructions, 191 with
// DnFeed (sm_90a, bf16, group 128, asym, one token column); unrolled by the ring (below), 168.
template <typename T, int NG, bool ASYM>
struct SharedFeed {
  static constexpr uint32_t kSlot = sizeof(RowsXSlot<NG, ASYM>);
  Feed<T, NG> f;
  long long tile_step;
  uint64_t policy;
  uint32_t w0, sz0;
  bool sz_lane;
  __device__ __forceinline__ SharedFeed(const Lin& L, int n0, int s_lo, int lane, RowsXSlot<NG, ASYM>* ring) {
    sz_lane = lane < SzSlot<NG, ASYM>::kChunks;
    f.init(L, 0, n0, s_lo, lane, sz_lane ? lane : 0);
    tile_step = (long long)L.TN * 2;
    policy = l2_evict_first();
    w0 = static_cast<uint32_t>(__cvta_generic_to_shared(&ring[0].w.w[0][lane]));
    sz0 = static_cast<uint32_t>(__cvta_generic_to_shared(&ring[0].sz.v[sz_lane ? lane : 0]));
  }
  __device__ __forceinline__ void issue(int slot) {
    const uint32_t w = w0 + slot * kSlot;
    if constexpr ((kKnockout & kKoLoad) == 0) {
      cp_async16_hint_s(w, f.w, policy);
      cp_async16_hint_s(w + static_cast<uint32_t>(sizeof(Stage::w[0])), f.w + tile_step, policy);
    }
    f.w += 2 * tile_step;
    if ((kKnockout & kKoScales) == 0 && sz_lane) cp_async16_s(sz0 + slot * kSlot, f.sz);
    f.sz += f.sz_step;
  }
};

// CTAs per SM the register cap is set for. One token column: 64 registers (1024 threads an SM), as
// w8.cu's rows. Two: the column doubles x's fragments (32 registers) and the sums; uncapped they take
// 94-101 registers, so 8 or 16 warps a CTA hold 16 warps an SM (ncu, run 18: 25% occupancy, DRAM 44%
// at M = 16 against 64% at M = 1). 4 warps x 5 CTAs hold 20 under a 96 cap, without spills (6 x 4
// under 80 spilled 16-36 bytes).
// TP_ROWSX_THREADS1: the threads an SM that one token column's cap is set for, a diagnostic knob.
// At 1280 the 8-warp CTAs take 5 an SM under a 48-register cap (8-96 bytes of spills): the 8B W4
// step ran 3.1% / 4.7% slower at batch 1 / 8 (H100, run 24, build_ab.py, the same bits).
#ifndef TP_ROWSX_THREADS1
#define TP_ROWSX_THREADS1 1024
#endif
constexpr int rowsx_ctas(int ntok, int w) {
  return ntok == 1 ? TP_ROWSX_THREADS1 / (w * 32) : w == 4 ? 5 : 512 / (w * 32);
}

// A CTA per 16 rows, W warps splitting K into equal runs of 128-k stages (GLU: W / 2 warps per
// matrix, gate's rows n0.. and up's n0 + N; N = o.N, the output's width).
template <typename T, int NTOK, int STAGES, int G, bool ASYM, int W, bool GLU>
__global__ void __launch_bounds__(W * 32, rowsx_ctas(NTOK, W)) w4_rowsx_kernel(const Args a, const Fold f) {
  constexpr int NG = kStageK / G;
  using Slot = RowsXSlot<NG, ASYM>;
  // a name of its own: the other kernels of w4.cu declare `smem` at uint4's alignment
  extern __shared__ __align__(TP_ROWSX_SLOT_ALIGN) uint4 smem_x[];
  uint4* smem = smem_x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int n0 = blockIdx.x * 16;
  constexpr int WS = GLU ? W / 2 : W;  // warps per K split
  const int up = GLU && warp >= WS;     // GLU: this warp reads up's rows
  const int stages = a.K / kStageK, per_w = (stages + WS - 1) / WS;
  const int w_lo = min(stages, (warp - up * WS) * per_w), nst = min(stages, w_lo + per_w) - w_lo;
  Slot* ring = reinterpret_cast<Slot*>(smem) + warp * STAGES;
  const Lin L{a.qw, a.scales, a.zeros, a.o.N, a.NP, a.K, a.KT, a.KGP, a.TN};
  SharedFeed<T, NG, ASYM> feed(L, n0 + up * a.o.N, w_lo, lane, ring);
  auto issue = [&](int slot) { feed.issue(slot); };
  ring_prologue<STAGES>(nst, issue);
  const uint4* xsrc[NTOK];
  bool has_tok[NTOK];
#pragma unroll
  for (int t = 0; t < NTOK; ++t) {  // a missing token reads token 0 (load_x's ALL): its column is never stored
    const int tok = 8 * t + g;
    has_tok[t] = tok < a.M;
    xsrc[t] = reinterpret_cast<const uint4*>(static_cast<const T*>(a.x) + (long long)(has_tok[t] ? tok : 0) * a.stride_xm +
                                             w_lo * kStageK + 16 * c);
  }
  float out[NTOK][4];
#pragma unroll
  for (int t = 0; t < NTOK; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) out[t][i] = 0.f;
  pdl_wait();  // x from here on
  uint4* staged = reinterpret_cast<uint4*>(reinterpret_cast<Slot*>(smem) + W * STAGES);  // a fold's (fold_smem)
  fold_fetch(f, a.M, a.o.N, n0, staged, W * 32);
  ring_pass_x<STAGES, NTOK>(
      nst, [&](int j, uint4(&xv)[NTOK][2][2]) { load_x<NTOK, true>(xv, xsrc, has_tok, j * (kStageK / 8)); }, issue,
      [&](int, int rd, const uint4(&xv)[NTOK][2][2]) { stage_qz<T, NTOK, NG, ASYM>(out, ring[rd].w, ring[rd].sz, xv, g, c); });
  cp_async_commit();  // fold_fetch's copies, where this warp's loop committed no group after them
  cp_async_wait<0>();
  __syncwarp();  // every lane's reads of the ring are done: it becomes the warp's [token][row] sums
  auto part = [&](int w) { return reinterpret_cast<float(*)[16]>(reinterpret_cast<Slot*>(smem) + w * STAGES); };
  if constexpr (GLU)
    glu_store<T, NTOK, W>(a.o, a.act, out, n0, warp, g, c, part, f, a.K, staged);
  else
    rows_store<T, NTOK, W>(a.o, out, n0, warp, g, c, part, f, a.K, staged);
}

template <typename T, int NTOK, int G, bool ASYM, int W>
int launch_rowsx(const Args& a, const Fold& f, cudaStream_t s) {
  constexpr int ring = 4 * static_cast<int>(sizeof(RowsXSlot<kStageK / G, ASYM>));  // a warp's ring of 4 slots
  static_assert(ring >= 16 * 16 * sizeof(float), "a drained ring holds its warp's [token][row] sums (rows_store)");
  void (*kern)(const Args, const Fold) = a.act ? w4_rowsx_kernel<T, NTOK, 4, G, ASYM, W, true>
                                    : w4_rowsx_kernel<T, NTOK, 4, G, ASYM, W, false>;
  // 16 warps: 72 KiB (1152-byte slots), past the default 48; a fold's consumer adds its partials (<= 32 KiB)
  const int smem = W * ring + fold_smem(f, a.M);
  static bool raised[2] = {false, false};
  const cudaError_t e = raise_smem_once(kern, raised[a.act != 0], W * ring + kFoldSmem);
  const unsigned ctas = a.act ? a.o.N / 16 : a.NP / 16;  // GLU: a CTA per 16 rows of h
  return static_cast<int>(e != cudaSuccess ? e : launch_kernel(kern, dim3(ctas), dim3(W * 32), smem, s, a, f));
}

template <typename T, int NTOK, int W>
int rowsx_by_group(const Args& a, const Fold& f, cudaStream_t s) {
  const bool asym = a.zeros != nullptr;
  if (a.G == 128)
    return asym ? launch_rowsx<T, NTOK, 128, true, W>(a, f, s) : launch_rowsx<T, NTOK, 128, false, W>(a, f, s);
  return asym ? launch_rowsx<T, NTOK, 64, true, W>(a, f, s) : launch_rowsx<T, NTOK, 64, false, W>(a, f, s);
}

// VARIANT 6: split_k is its warps (8 or 16; at two token columns also 4: rowsx_ctas), ring 4.
// Scales or zeros not 16-byte aligned (the ring's chunk copies): v7 at the default split, as by_rows
// (GLU: refused, -1).
template <typename T>
int by_rows_x(const Args& a, const Fold& f, int stages, cudaStream_t s) {
  if (stages != 4) return -2;
  const int w = a.split_k;
  if (w != 8 && w != 16 && (a.M <= 8 || w != 4)) return -1;
  if (!chunks_aligned(a)) return a.act || f.res || f.ss_in ? -1 : v7_fallback<T>(a, s);  // v7: no GLU, no fold
  if (a.M <= 8) return w == 8 ? rowsx_by_group<T, 1, 8>(a, f, s) : rowsx_by_group<T, 1, 16>(a, f, s);
  if (w == 4) return rowsx_by_group<T, 2, 4>(a, f, s);
  return w == 8 ? rowsx_by_group<T, 2, 8>(a, f, s) : rowsx_by_group<T, 2, 16>(a, f, s);
}

}  // namespace
