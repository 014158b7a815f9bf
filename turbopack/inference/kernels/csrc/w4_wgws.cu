// W4A16 prefill on Hopper (sm_90a), warp-specialized: turbopack_w4_wgws. Same operands as w4_wgmma.cu
// (the weights wgmma's A, decoded into registers; x its B, read from shared memory by the tensor core),
// a different schedule. Run 29's ncu of w4_wgmma.cu (gate_up, M = 256, H100) found 79% of its
// instructions in the weight decode and the issue slots 45% busy with 2-4 warps a scheduler: each
// 64 x 16 A fragment costs a warp ~16 instructions (SHF, LOP3, HADD2, HMUL2: w4_mma.cuh dq) and there
// it serves BM = 64 tokens, so two warpgroups need ~32 issue slots per scheduler per 32 tensor cycles,
// every cycle, while they also wait on __syncthreads and their own copies. Here:
//   - one producer warpgroup: one lane of its first warp issues every copy of a stage as bulk copies
//     (cp.async.bulk, the TMA unit) that complete on the stage's `full` mbarrier; no consumer thread
//     copies, waits on a copy it issued, or meets a CTA barrier in the main loop;
//   - two consumer warpgroups, each MT 64-row A tiles x BM tokens (BM = 256 at MT = 1: one decoded
//     fragment serves 256 tokens, a quarter of w4_wgmma.cu's decode per MAC), which release a stage
//     on its `empty` mbarrier once the wgmmas reading it have completed (wgmma.wait_group 1 after the
//     next stage's commit: one group in flight while the next stage decodes). The in-flight group
//     still reads its A registers (PTX: writing them before its wait is undefined, and ptxas does
//     not check it across a loop's iterations), so stages alternate between two sets, the loop
//     unrolled twice to name them by constants.
//
// A stage is one 64-k tile. Its slot: x [BM rows][128 B], then the CTA's BN = 128 MT weight rows
// [BN][32 B] (the packed w4_t{16,64}x64 tile rows, k in w4.cu's order), scales [BN] (16-bit) and zero
// points [BN] (uint8, asym only) of the tile's group, each copied as BN / TN contiguous runs of the
// layout (a row tile's 64 k are TN x 32 contiguous bytes, its group's scales TN x 2, zeros TN).
// x arrives as it is, one tensor-map box of BM tokens x 64 k (TMA, in the 128-byte swizzle that
// desc_k128 describes, zeros past M), so the tensor core reads B in natural k order. The A fragments
// follow it (WsGather): w4.cu's order gives thread c of a quad k 16c .. 16c + 15 of a row, where
// wgmma's A fragment wants k 16u + 2c (+1, +8, +9) at step u, so each thread reads its rows' whole
// 32 bytes (the quad's four lanes read the same addresses: a broadcast) and gathers nibbles c and
// c + 4 of every word. Runs 29-31 instead wrote an x image first (x in the A fragments' k order, one
// more pass over x and one more launch a call).
//
// Rows: warp w (0-3) of consumer warpgroup h owns rows 32 (4 h + w) .. + 31 at MT = 2 (fragment r =
// A tile r: rows + 16 r), 16 (4 h + w) .. + 15 at MT = 1, so the accumulators are ws_store.cuh's R = MT
// fragments of 16 rows, split-K included.
#include "tma.cuh"
#include "w4_mma.cuh"
#include "wgmma.cuh"
#include "ws_store.cuh"
#include "ws_stream.cuh"

namespace {

constexpr int kWsTileK = 64;    // k per stage
constexpr int kWsThreads = 384;  // consumer warpgroups 0, 1; producer warpgroup 2

// WB: the weights' bits, 4 (W4A16: w4_t{16,64}x64, a 32-byte row a stage, its group's 16-bit scale and
// uint8 zero point) or 8 (W8A16: i8_t{16,64}x64, a 64-byte row, the fp32 row scale once at the end)
template <int WB, int MT, int BM>
struct WsSlot {
  static constexpr int kBN = 128 * MT;
  static constexpr int kX = BM * 128, kW = kBN * 8 * WB, kS = WB == 4 ? kBN * 2 : 0, kZ = WB == 4 ? kBN : 0;
  static constexpr int kSize = (kX + kW + kS + kZ + 1023) / 1024 * 1024;  // x of every slot 1024-aligned
};

#ifdef TP_WGMMA
__device__ __forceinline__ uint4 lds128(uint32_t at) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(at));
  return v;
}
__device__ __forceinline__ uint32_t lds16(uint32_t at) {
  uint16_t v;
  asm volatile("ld.shared.u16 %0, [%1];\n" : "=h"(v) : "r"(at));
  return v;
}
__device__ __forceinline__ uint32_t lds8(uint32_t at) {
  uint32_t v;
  asm volatile("ld.shared.u8 %0, [%1];\n" : "=r"(v) : "r"(at));
  return v;
}

// The producer's view of its CTA, fixed for the kernel: stage kt's copies then differ from stage 0's by
// kt whole runs, so the stage loop divides nothing (run 31's ncu: the one producer thread's per-stage
// divisions and 64-bit products, ~210 instructions of dependent latency a stage, left the consumers
// waiting on `full` half the time)
struct WsFeed {
  int tok0;                             // this CTA's first token (x's tensor-map box row)
  const char* qw;                       // its first layout tile's weights at k 0
  const char* sc;                       // its first tile's scales (group 0)
  const uint8_t* z;                     // its first tile's zero points (group 0; asym only)
  int qw_tile, sc_tile;                 // bytes from one layout tile to the next: weights, scales (zeros: half)
  uint32_t bytes;                       // a stage's bytes, every copy (expect_tx)
  int live;                             // the CTA's layout tiles that lie in NP
  int gshift;                           // log2(G / 64): stage kt reads group kt >> gshift
};

template <int WB, int MT, int BM>
__device__ __forceinline__ WsFeed ws_feed(const MmaArgs& a, int row0, int tok0) {
  using S = WsSlot<WB, MT, BM>;
  const bool asym = WB == 4 && a.zeros != nullptr;
  const long long tn0 = row0 / a.TN;
  WsFeed f;
  f.live = min(S::kBN / a.TN, (a.NP - row0 + a.TN - 1) / a.TN);
  f.tok0 = tok0;
  f.qw_tile = a.KT * a.TN * 8 * WB, f.sc_tile = WB == 4 ? a.KGP * a.TN * 2 : 0;  // int: the entry points refuse larger
  f.qw = reinterpret_cast<const char*>(a.qw) + tn0 * f.qw_tile;
  f.sc = WB == 4 ? static_cast<const char*>(a.scales) + tn0 * f.sc_tile : nullptr;
  f.z = asym ? a.zeros + tn0 * (f.sc_tile / 2) : nullptr;
  f.gshift = a.G == 128;
  constexpr bool cx = (kKnockout & kKoX) == 0, cw = (kKnockout & kKoLoad) == 0, cs = (kKnockout & kKoScales) == 0;
  f.bytes = (cx ? S::kX : 0) + f.live * a.TN * ((cw ? 8 * WB : 0) + (cs && WB == 4 ? 2 + (asym ? 1 : 0) : 0));
  return f;
}

// The producer's stage: every copy of 64-k tile kt into slot `slot`, counted on its full barrier; one
// elected lane of the producer warp issues them
template <int WB, int MT, int BM>
__device__ __forceinline__ void ws_fill(const WsFeed& f, const CUtensorMap* xmap, int TN, int kt, uint32_t slot,
                                        uint32_t full, uint64_t policy) {
  using S = WsSlot<WB, MT, BM>;
  constexpr int kRow = 8 * WB;  // a row's bytes a stage
  constexpr bool cx = (kKnockout & kKoX) == 0, cw = (kKnockout & kKoLoad) == 0, cs = (kKnockout & kKoScales) == 0;
  if (!elect_one()) return;
  mbar_expect_tx(full, f.bytes);  // x's box counts its zero-filled tokens past M too
  if (cx) tma_load_2d(slot, xmap, kt * kWsTileK, f.tok0, full);
  const int g = kt >> f.gshift;
  const char *w = f.qw + kt * TN * kRow, *sc = f.sc + g * TN * 2;
  const uint8_t* z = f.z + g * TN;
  for (int t = 0; t < f.live; ++t) {
    if (cw) bulk_copy_hint(slot + S::kX + t * TN * kRow, w + t * f.qw_tile, TN * kRow, full, policy);
    if (cs && WB == 4) bulk_copy(slot + S::kX + S::kW + t * TN * 2, sc + t * f.sc_tile, TN * 2, full);
    if (cs && WB == 4 && f.z != nullptr)
      bulk_copy(slot + S::kX + S::kW + S::kS + t * TN, z + t * (f.sc_tile / 2), TN, full);
  }
}

// Thread c's quad gather (constant per thread): word h of a row for decode_words, in wgmma's k order.
// The row's 32 bytes are words w0..w7, word 2c' + h' of lane c' holding k 16c' + 8h' + 2j (nibble j)
// and + 1 (nibble j + 4), j < 4 (w4.cu's order). Step u's A registers want k 16u + 2c (+1) and 16u +
// 2c + 8 (+9): nibbles c and c + 4 of words 2u and 2u + 1. decode_words takes a step pair's from one
// word (nibbles 2u' and 2u' + 4 -> k 2c, 2c + 1 of step 2h + u'; 2u' + 1, 2u' + 5 -> k 2c + 8, 2c + 9),
// so word h gets, at nibble p and p + 4, nibbles c and c + 4 of w[4h + p]. Its byte 0 holds nibble c
// of w0 and of w1, byte 1 of w2 and w3, bytes 2 and 3 the same of nibble c + 4. So one prmt picks
// bytes c / 2 (nibble c) and c / 2 + 2 (nibble c + 4) of w0 and w2 in that byte order, another the
// same of w1 and w3, and one lop3 keeps the first's nibble (c & 1) low and the second's high: five
// instructions a word (two shifts by the lane's constant).
struct WsGather {
  uint32_t lo, hi, sel;  // shift of the first's nibble down, of the second's up (4 - lo), the prmt selector
  __device__ __forceinline__ explicit WsGather(int c) : lo(4 * (c & 1)), hi(4 - 4 * (c & 1)) {
    const uint32_t b = c >> 1;
    sel = b | (4 + b) << 4 | (b + 2) << 8 | (6 + b) << 12;
  }
  __device__ __forceinline__ uint32_t word(uint32_t w0, uint32_t w1, uint32_t w2, uint32_t w3) const {
    return (__byte_perm(w0, w2, sel) >> lo & 0x0F0F0F0Fu) | (__byte_perm(w1, w3, sel) << hi & 0xF0F0F0F0u);
  }
};

// A consumer's stage: its MT fragments' A registers af ([fragment][word h][step 2h + u]) decoded from
// the slot (rows rr + 16 r, + 8), then four k16 steps of MT wgmmas each on the slot's x, one commit
// group. The wgmmas read af after this returns: the caller may write these registers again only once
// the group has completed (PTX: accessing an in-flight wgmma's A registers is undefined)
template <typename T, int MT, int BM>
__device__ __forceinline__ void ws_wgmma(float (&acc)[MT][BM / 8][4], uint32_t (&af)[MT][2][2][4], uint32_t slot,
                                         bool first);

template <typename T, int MT, int BM>
__device__ __forceinline__ void ws_mma(float (&acc)[MT][BM / 8][4], uint32_t (&af)[MT][2][2][4], uint32_t slot,
                                       int rr, const WsGather& q, bool asym, bool first) {
  using S = WsSlot<4, MT, BM>;
  constexpr uint32_t kM16 = Half16<T>::kMagic & 0xFFFFu;
#pragma unroll
  for (int r = 0; r < MT; ++r) {
    const int row = rr + 16 * r;
    const uint4 l0 = lds128(slot + S::kX + row * 32), l1 = lds128(slot + S::kX + row * 32 + 16);
    const uint4 h0 = lds128(slot + S::kX + (row + 8) * 32), h1 = lds128(slot + S::kX + (row + 8) * 32 + 16);
    const uint2 lo = {q.word(l0.x, l0.y, l0.z, l0.w), q.word(l1.x, l1.y, l1.z, l1.w)};
    const uint2 hi = {q.word(h0.x, h0.y, h0.z, h0.w), q.word(h1.x, h1.y, h1.z, h1.w)};
    const uint32_t sc[2] = {lds16(slot + S::kX + S::kW + row * 2) * 0x10001u,
                            lds16(slot + S::kX + S::kW + (row + 8) * 2) * 0x10001u};
    const uint32_t zl = asym ? lds8(slot + S::kX + S::kW + S::kS + row) : 8u;
    const uint32_t zh = asym ? lds8(slot + S::kX + S::kW + S::kS + row + 8) : 8u;
    const uint32_t mz[2] = {(kM16 + zl) * 0x10001u, (kM16 + zh) * 0x10001u};
    if constexpr ((kKnockout & kKoDecode) != 0) {
#pragma unroll
      for (int u = 0; u < 2; ++u)
#pragma unroll
        for (int e = 0; e < 4; ++e) af[r][0][u][e] = e & 1 ? hi.x : lo.x, af[r][1][u][e] = e & 1 ? hi.y : lo.y;
    } else {
      decode_words<T>(af[r][0], lo.x, hi.x, sc, mz);
      decode_words<T>(af[r][1], lo.y, hi.y, sc, mz);
    }
  }
  ws_wgmma<T, MT, BM>(acc, af, slot, first);
}

// int8 rows (W8A16): the slot's row holds k 0..63 in order, so step u's A registers want bytes
// 16u + 2c, + 1 (a0, a1) and 16u + 2c + 8, + 9 (a2, a3): byte 2c of words 4u, 4u + 1 and of words
// 4u + 2, 4u + 3. Each thread reads its rows' whole 64 bytes (four LDS.128, the quad's lanes the
// same addresses: a broadcast); one prmt a word pair puts the k pair at bytes 0-1 (sel_lo) or 2-3
// (sel_hi), a third joins them, and i8_pairs turns the four codes into the two 16-bit pairs
// (exact: the row scale comes once, after the sums)
struct W8Gather {
  uint32_t sel_lo, sel_hi;
  __device__ __forceinline__ explicit W8Gather(int c)
      : sel_lo(2 * c | (2 * c + 1) << 4), sel_hi((2 * c) << 8 | (2 * c + 1) << 12) {}
  __device__ __forceinline__ uint32_t word(uint4 w) const {
    return __byte_perm(__byte_perm(w.x, w.y, sel_lo), __byte_perm(w.z, w.w, sel_hi), 0x7610);
  }
};

template <typename T, int MT, int BM>
__device__ __forceinline__ void ws_mma8(float (&acc)[MT][BM / 8][4], uint32_t (&af)[MT][2][2][4], uint32_t slot,
                                        int rr, const W8Gather& q, bool first) {
  using S = WsSlot<8, MT, BM>;
#pragma unroll
  for (int r = 0; r < MT; ++r)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh)  // rows rr + 16 r and + 8: A registers e = hh (k 2c) and 2 + hh (k 2c + 8)
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const uint32_t w = q.word(lds128(slot + S::kX + (rr + 16 * r + 8 * hh) * 64 + 16 * u));
        i8_pairs<T>(w, af[r][u >> 1][u & 1][hh], af[r][u >> 1][u & 1][2 + hh]);
      }
  ws_wgmma<T, MT, BM>(acc, af, slot, first);
}

// four k16 steps of MT wgmmas each on the slot's x (step u: A registers af[r][u / 2][u % 2]), one
// commit group
template <typename T, int MT, int BM>
__device__ __forceinline__ void ws_wgmma(float (&acc)[MT][BM / 8][4], uint32_t (&af)[MT][2][2][4], uint32_t slot,
                                         bool first) {
  float(&d)[MT][BM / 2] = reinterpret_cast<float(&)[MT][BM / 2]>(acc);
  wg_fence();
  if constexpr ((kKnockout & kKoMath) != 0) {  // the decoded registers kept live, no wgmma
#pragma unroll
    for (int r = 0; r < MT; ++r)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int u = 0; u < 2; ++u)
#pragma unroll
          for (int e = 0; e < 4; ++e) pin(reinterpret_cast<int32_t&>(af[r][h][u][e]));
  } else {
#pragma unroll
    for (int u = 0; u < 4; ++u)
#pragma unroll
      for (int r = 0; r < MT; ++r)
        Wgmma<T, BM>::run(!first || u > 0, d[r], af[r][u >> 1][u & 1], desc_k128(slot + 32 * u));
  }
  wg_commit();
}
#endif  // TP_WGMMA

#ifdef TP_WGMMA
// A consumer's run of n 64-k stages from ring position p (prev: the slot before it). Two sets of A
// registers, by stage parity, named by constants (the loop unrolled twice): stage i decodes into set
// i & 1 while stage i - 1's group, which reads the other set, may still run; set i & 1 was last read
// by stage i - 2, whose group stage i - 1's wait retired. The first wgmma writes acc (scale-d 0).
// Returns with every group complete and every slot but the last (prev) released.
template <typename T, int WB, int MT, int BM>
__device__ __forceinline__ void ws_stages(float (&acc)[MT][BM / 8][4], uint32_t base, uint32_t full, uint32_t empty,
                                          int stages, int n, RingPos& p, int& prev, int rr, bool asym, int lane,
                                          int c) {
  using S = WsSlot<WB, MT, BM>;
  const WsGather q(c);
  const W8Gather q8(c);
  uint32_t af[2][MT][2][2][4];
  for (int i0 = 0; i0 < n; i0 += 2)
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      const int i = i0 + b;
      if (i < n) {
        mbar_wait(full + 8 * p.slot, p.phase);
        if constexpr (WB == 4) ws_mma<T, MT, BM>(acc, af[b], base + p.slot * S::kSize, rr, q, asym, i == 0);
        else ws_mma8<T, MT, BM>(acc, af[b], base + p.slot * S::kSize, rr, q8, i == 0);
        wg_wait<1>();  // stage i - 1's group has completed: its slot and its A registers are free
        if (i > 0 && lane == 0) mbar_arrive(empty + 8 * prev);
        prev = p.slot;
        p.next(stages);
      }
    }
  wg_wait<0>();
#pragma unroll
  for (int r = 0; r < MT; ++r)
#pragma unroll
    for (int t = 0; t < BM / 8; ++t)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        pin(acc[r][t][e]);
        if (n == 0) acc[r][t][e] = 0.f;  // an empty K slice (split-K past the stages)
      }
}

// W8A16's fp32 row scale (zero on padded rows), before any store or sum of slices
template <int MT, int BM>
__device__ __forceinline__ void ws_row_scale(float (&acc)[MT][BM / 8][4], const MmaArgs& a, int row0, int rr) {
  const float* sc = static_cast<const float*>(a.scales);
#pragma unroll
  for (int r = 0; r < MT; ++r) {
    const int row = row0 + rr + 16 * r;
    const float s_lo = row < a.NP ? sc[row] : 0.f, s_hi = row + 8 < a.NP ? sc[row + 8] : 0.f;
#pragma unroll
    for (int t = 0; t < BM / 8; ++t)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[r][t][e] *= e >> 1 ? s_hi : s_lo;
  }
}

#endif  // TP_WGMMA

// SK (stream-K, ws_stream.cuh): a 1-D grid of P CTAs over the tiles' stages, tile t = row tile
// t / TX, token tile t % TX (TX = the token tiles); else the grid is (token tile, row tile, K slice)
template <typename T, int WB, int MT, int BM, bool SK>
__global__ void __launch_bounds__(kWsThreads, 1) w4_wgws_kernel(const __grid_constant__ CUtensorMap xmap, const MmaArgs a) {
#ifdef TP_WGMMA
  using S = WsSlot<WB, MT, BM>;
  extern __shared__ uint4 smem_raw[];
  const uint32_t base = (static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) + 1023) & ~1023u;
  const uint32_t full = base + a.stages * S::kSize, empty = full + 8 * a.stages;  // mbarriers, 8 bytes each
  const int S_all = a.K / kWsTileK;
  const SkPlan* pl = nullptr;  // SK: this CTA's segments
  if constexpr (SK) {
    const int tx = (a.M + BM - 1) / BM;
    pl = sk_plan(S_all, tx * ((a.NP + S::kBN - 1) / S::kBN), tx);
  }
  const int row0 = blockIdx.y * S::kBN, tile = blockIdx.y * gridDim.x + blockIdx.x;
  const int per = (S_all + a.split_k - 1) / a.split_k;
  const int s_lo = min(S_all, static_cast<int>(blockIdx.z) * per), n_st = min(S_all, s_lo + per) - s_lo;
  ring_init(full, empty, a.stages);  // its barrier publishes the plan too
  const bool cl = !SK && a.split_k > 1 && in_cluster_of(a.split_k);  // the K slices sum in their cluster
  // registers move from the producer warpgroup (a loop of copies) to the consumers' accumulators:
  // 40 + 2 x 232 per thread of a warpgroup fits the SM's 64 K at 384 threads, where 168 each spilled
  if (threadIdx.x >= 256) {  // the producer warpgroup: one warp copies, the rest only meet the split-K barriers
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (threadIdx.x < 288) {  // its first warp, converged: the stage loop's values stay warp-uniform
      const uint64_t policy = l2_evict_first();
      RingPos p;
      if constexpr (SK) {
        for (int j = 0, i = 0; j < pl->n; ++j) {
          const SkSeg sg = pl->seg[j];
          const WsFeed f = ws_feed<WB, MT, BM>(a, sg.tile / pl->tx * S::kBN, sg.tile % pl->tx * BM);
          for (int kt = sg.lo; kt < sg.hi; ++kt, ++i, p.next(a.stages)) {
            if (i >= a.stages) mbar_wait(empty + 8 * p.slot, p.phase ^ 1);
            ws_fill<WB, MT, BM>(f, &xmap, a.TN, kt, base + p.slot * S::kSize, full + 8 * p.slot, policy);
          }
        }
      } else {
        const WsFeed f = ws_feed<WB, MT, BM>(a, row0, blockIdx.x * BM);
        for (int i = 0; i < n_st; ++i, p.next(a.stages)) {
          if (i >= a.stages) mbar_wait(empty + 8 * p.slot, p.phase ^ 1);
          ws_fill<WB, MT, BM>(f, &xmap, a.TN, s_lo + i, base + p.slot * S::kSize, full + 8 * p.slot, policy);
        }
      }
    }
    if (cl) cluster_sync_all(), cluster_sync_all();  // cluster_reduce's two cluster barriers
    else if (!SK && a.split_k > 1) (void)arrive_last(a.o, tile, a.split_k);  // store_sliced_rows' two CTA barriers
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, c = lane & 3;
  const int rr = 16 * MT * warp + (lane >> 2);  // this thread's row g of fragment 0, in the CTA's rows
  const bool asym = a.zeros != nullptr;
  float acc[MT][BM / 8][4];
  static_assert(8 * rows_bytes(MT, BM) <= 3 * S::kSize, "every warp's staged rows fit the shallowest ring");
  const uint32_t stage = base + warp * rows_bytes(MT, BM);  // this warp's share of the ring, once idle
  RingPos p;
  int prev = 0;  // the last stage's slot
  if constexpr (SK) {
#pragma unroll 1
    for (int j = 0; j < pl->n; ++j) {
      ws_stages<T, WB, MT, BM>(acc, base, full, empty, a.stages, pl->seg[j].hi - pl->seg[j].lo, p, prev, rr, asym,
                               lane, c);
      if (j + 1 < pl->n && lane == 0) mbar_arrive(empty + 8 * prev);  // the next segment's first stage does not
      if constexpr ((kKnockout & kKoEpilogue) != 0) continue;
      const SkSeg sg = pl->seg[j];
      const int r0 = sg.tile / pl->tx * S::kBN;
      if constexpr (WB == 8) ws_row_scale<MT, BM>(acc, a, r0, rr);
      if (sg.lo > 0) sk_publish<MT, BM / 8>(a.o, acc, sg, pl->tiles);
      else sk_finish<T, MT, BM / 8>(a.o, acc, sg, pl->tiles, stage, r0 + 16 * MT * warp, sg.tile % pl->tx * BM);
    }
    return;
  }
  ws_stages<T, WB, MT, BM>(acc, base, full, empty, a.stages, n_st, p, prev, rr, asym, lane, c);
  if constexpr ((kKnockout & kKoEpilogue) != 0) return;
  if constexpr (WB == 8) ws_row_scale<MT, BM>(acc, a, row0, rr);
  const int n0 = row0 + 16 * MT * warp, tok0 = blockIdx.x * BM;
  // both warpgroups' wgmmas done: the ring is idle (cluster_reduce's scratch, store_rows' staging)
  if (cl || a.split_k == 1) asm volatile("bar.sync 1, 256;\n" ::: "memory");
  if (cl) {  // CLUSTER: the K slices' sums in their cluster, through the idle ring (common.cuh cluster_reduce)
    pdl_trigger();
    if (cluster_reduce<MT, BM / 8>(acc, a.split_k, ring_scratch(smem_raw, base) + warp * MT * (BM / 8) * 32))
      store_rows<T, MT, BM / 8>(a.o, acc, stage, n0, tok0);  // past both cluster barriers: no peer reads it
  } else if (a.split_k == 1) {
    store_rows<T, MT, BM / 8>(a.o, acc, stage, n0, tok0);
  } else {
    store_sliced_rows<T, MT, BM / 8>(a.o, acc, stage, n0, tok0, tile, gridDim.x * gridDim.y);
  }
#endif
}

template <typename T, int WB, int MT, int BM, bool SK>
int launch(const MmaArgs& a, int stride_xm, bool cluster, int ctas, cudaStream_t s) {
  using S = WsSlot<WB, MT, BM>;
  const int smem = a.stages * S::kSize + 1024 + 16 * a.stages;
  if (smem > kSmemMax) return -1;
  const int cl = cluster && a.split_k > 1 ? a.split_k : 1;
  if (!cluster_fits(cl, MT * (BM / 8), a.stages * S::kSize)) return -1;
  const dim3 tiles((a.M + BM - 1) / BM, (a.NP + S::kBN - 1) / S::kBN, a.split_k);
  if (SK && (cluster || a.split_k != 1 || !sk_fits(ctas, 1LL * tiles.x * tiles.y * (a.K / kWsTileK), a.K / kWsTileK)))
    return -1;
  CUtensorMap xmap;  // x [M, K] 16-bit, boxes of BM tokens x 64 k
  if (!row_map_128b(&xmap, a.x, 2, a.M, a.K, 2LL * stride_xm, BM)) return -1;
  static int raised = 0;  // the largest dynamic shared memory allowed so far (one attribute call per size)
  if (smem > raised) {
    const cudaError_t e =
        cudaFuncSetAttribute(w4_wgws_kernel<T, WB, MT, BM, SK>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return static_cast<int>(e);
    raised = smem;
  }
  const dim3 grid = SK ? dim3(ctas) : tiles;
  return static_cast<int>(
      launch_with(w4_wgws_kernel<T, WB, MT, BM, SK>, grid, dim3(kWsThreads), smem, s, Launch{false, 1, cl}, xmap, a));
}

template <typename T, int WB, int MT, int BM>
int launch_sk(const MmaArgs& a, int stride_xm, bool cl, int ctas, cudaStream_t s) {
  return ctas > 0 ? launch<T, WB, MT, BM, true>(a, stride_xm, cl, ctas, s)
                  : launch<T, WB, MT, BM, false>(a, stride_xm, cl, 0, s);
}

template <typename T, int WB>
int by_tile(const MmaArgs& a, int mt, int bm, int stride_xm, bool cl, int ctas, cudaStream_t s) {
  if (mt == 1 && bm == 256) return launch_sk<T, WB, 1, 256>(a, stride_xm, cl, ctas, s);
  if (mt == 1 && bm == 128) return launch_sk<T, WB, 1, 128>(a, stride_xm, cl, ctas, s);
  if (mt == 2 && bm == 64) return launch_sk<T, WB, 2, 64>(a, stride_xm, cl, ctas, s);
  if (mt == 1 && bm == 64) return launch_sk<T, WB, 1, 64>(a, stride_xm, cl, ctas, s);
  return -1;
}

}  // namespace

// y [M, N] = x [M, K] W^T (+ bias) on sm_90a; dtype 0 = bf16, 1 = fp16 (x, scales, bias, y). mt: 64-row
// A tiles per consumer warpgroup (the CTA's rows: 128 mt), bm: tokens per CTA; (mt, bm) one of (1, 256),
// (1, 128), (2, 64), (1, 64). x and qweight, scales and zeros 16-byte aligned (x: a tensor map's base). stages: 3
// to what fits 227 KB (6 at 128 x 256, 10 at 128 x 128, 13 at 256 x 64, 17 at 128 x 64). split_k > 1: cluster 1 sums the
// K slices in a cluster (split_k <= 8, the partials within the ring: stages >= 4), cluster 0 through ws
// (fp32 [split_k x tiles x 128 mt x bm]) and counters (int32, one a tile, zeroed, left zeroed). ctas > 0:
// stream-K over that many CTAs (split_k 1, no cluster; at most the SMs, a run of ceil(tiles x K / 64 /
// ctas) stages shorter than K / 64; ws: as many planes as a tile has slices past its head). Returns 0,
// -1 for bad arguments, else the CUDA error (the kernels are empty unless built for sm_90a).
extern "C" int turbopack_w4_wgws(const void* x, const void* qw, const void* scales, const void* zeros,
                                 const void* bias, void* y, void* ws, void* counters, int M, int N, int NP, int K,
                                 int KT, int KGP, int TN, int G, int stride_xm, int split_k, int mt, int bm,
                                 int stages, int cluster, int ctas, int dtype, void* stream) {
  MmaArgs a;
  if (!mma_args(a, x, qw, scales, zeros, bias, y, ws, counters, M, N, NP, K, KT, KGP, TN, G, stride_xm, split_k, stages,
                dtype, 64) ||
      (128 * mt) % TN != 0 || static_cast<long long>(KT) * TN * 32 > INT32_MAX)
    return -1;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  return dtype == 0 ? by_tile<__nv_bfloat16, 4>(a, mt, bm, stride_xm, cluster != 0, ctas, s)
                     : by_tile<__half, 4>(a, mt, bm, stride_xm, cluster != 0, ctas, s);
}

// W8A16: y [M, N] = (x [M, K] q^T) * s (+ bias), q int8 i8_t{16,64}x64 [NP / TN, KT, TN, 64], s fp32 [NP]
// (zero past N). Arguments as turbopack_w4_wgws's, ctas included (no zeros, no groups: the scale is a row's); K in
// whole 128-k blocks (mma_args' check; the tiles are 64 k).
extern "C" int turbopack_w8_wgws(const void* x, const void* qw, const void* scales, const void* bias, void* y, void* ws,
                                 void* counters, int M, int N, int NP, int K, int KT, int TN, int stride_xm,
                                 int split_k, int mt, int bm, int stages, int cluster, int ctas, int dtype,
                                 void* stream) {
  MmaArgs a;  // group 64 stands in for the check: WB 8 reads no group
  if (!mma_args(a, x, qw, scales, nullptr, bias, y, ws, counters, M, N, NP, K, KT, 0, TN, 64, stride_xm, split_k,
                stages, dtype, 64) ||
      KT * 64 != K || (128 * mt) % TN != 0 || static_cast<long long>(KT) * TN * 64 > INT32_MAX)
    return -1;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  return dtype == 0 ? by_tile<__nv_bfloat16, 8>(a, mt, bm, stride_xm, cluster != 0, ctas, s)
                     : by_tile<__half, 8>(a, mt, bm, stride_xm, cluster != 0, ctas, s);
}
