// W4A16 for M >= 32 tokens on Hopper (sm_90a) from the packed w4_t{16,64}x64 layouts, with warpgroup
// MMAs: turbopack_w4_wgmma. w4_mma.cu (mma.sync) reads every MMA's x fragment from shared memory
// into registers, 256 bytes per m16n8k16, and ncu on the H200 (run 8, M = 64) found it bound there
// (short scoreboard and MIO stalls, 31% tensor pipe). Here the operands are swapped as in
// TurboMind's sm90 GEMM: the weights are wgmma's A operand, decoded into registers (per warp the
// same m16n8k16 A fragment w4_mma.cu builds, so a warpgroup's four warps are one 64-row tile), and
// x is B, read by the tensor core straight from shared memory through a descriptor: one
// m64nBMk16 per 16 k, no x registers, no LDS of x.
//
// A CTA owns BN = 64 * WG weight rows (WG warpgroups) x BM tokens (32, 64, 128). Per 128-k stage
// the weights, scales and zero points go through a cp.async ring (w4_mma.cuh WeightFeed: the same
// copies as w4_mma.cu), and x through registers: the tensor core reads B's k in its own order, and
// our A fragments take k = 16c + 4u .. (w4.cu's K order: thread c of a quad holds bytes 8c..8c+7 of
// each 64-k row, step u its k 16c + 4u..16c + 4u + 3), so B's row must hold, at 16-bit pair 8u + c
// (+ 4), the logical pair 8c + 2u (+ 1). In 16-byte chunks that is a 4 x 4 transpose of 32-bit words:
// physical chunk 4p + m of a 64-k row is word m of logical chunks 2i + p, i = 0..3. A thread loads
// the four logical chunks of one half (p) of one token's 64-k row (4 x LDG.128, a stage ahead) and
// stores the four physical chunks (4 x STS.128) with no ALU; cp.async, which copies bytes in order,
// cannot. The chunks go in the 128-byte swizzle (wgmma.cuh desc_k128), whose XOR also makes the
// stores conflict-free: the eight lanes of a store phase hold p = 0, 1 of four consecutive tokens.
//
// wgmma is asynchronous: the A registers of a 64-k tile (16 per thread, four k16 steps) are decoded
// while the previous tile's group runs (wg_wait<1> after each commit keeps one group in flight), and
// x's stores for stage i + 1 go to a slot no pending group reads (ring depth >= 3). Split-K by slices
// and the epilogue are w4_mma.cu's: the accumulators are mma.sync's C layout per n8 block.
//
// WREG (run 10, not yet measured): ncu of the kernel above (run 9, gate_up M = 256) found shared memory
// the limit (L1/shared 77% busy, the tensor pipe at about a third): per 1 M MACs at BN 128, BM 64 the
// weights' cp.async writes and LDS reads are 16 KB of the ~64 KB of shared traffic. With WREG the
// weights skip shared memory: thread (g, c) of a warp needs, per 64-k tile, bytes 8c..8c+7 of its
// fragment's rows g and g + 8 (decode_af's words), and in the tile-contiguous layout a row's 64 k are
// 32 contiguous bytes, so two LDG.64 per tile, each warp reading 2 x 256 contiguous bytes. They are
// issued kAhead stages before their decode into a register ring (8 registers a stage), indexed by
// constants: the main loop is unrolled kAhead times. Scales and zero points stay in the cp.async ring.
#include "w4_mma.cuh"
#include "wgmma.cuh"

namespace {

// One ring slot, in bytes: x first (two 64-k chunks of BM rows x 128 B, 1024-aligned for the swizzle),
// then F = 4 WG fragments' weights [F][2 tiles][32] uint4 and scales/zeros [F][kSzChunks] uint4; the
// size rounded up to 1024 so every slot's x stays aligned
template <int WG, int BM, bool WREG>
struct WgSlot {
  static constexpr int kX = 2 * BM * 128, kW = WREG ? 0 : WG * 4 * 64 * 16, kSz = WG * 4 * kSzChunks * 16;
  static constexpr int kSize = (kX + kW + kSz + 1023) / 1024 * 1024;
};

#ifdef TP_WGMMA
// x of one stage through registers: unit = (token t, 64-k chunk j, half p), 4 x 16 bytes; unit id =
// thread + 128 WG * u, p = bit 0 (a 32-byte sector per lane pair), t the next log2(BM) bits, j the top
template <typename T, int WG, int BM>
struct XFeed {
  static constexpr int kUnits = BM / (32 * WG);
  static_assert(kUnits >= 1 && BM * 4 == kUnits * 128 * WG, "BM x 4 units over the CTA's threads");
  uint4 r[kUnits][4];
  __device__ __forceinline__ static void unit(int u, int& p, int& t, int& j) {
    const int id = threadIdx.x + u * 128 * WG;
    p = id & 1, t = (id >> 1) & (BM - 1), j = id / (2 * BM);
  }
  __device__ __forceinline__ void load(const MmaArgs& a, int s) {
#pragma unroll
    for (int u = 0; u < kUnits; ++u) {
      int p, t, j;
      unit(u, p, t, j);
      const int tok = min(static_cast<int>(blockIdx.x) * BM + t, a.M - 1);  // past M: the last token, never stored
      const uint4* src = reinterpret_cast<const uint4*>(static_cast<const T*>(a.x) + (long long)tok * a.stride_xm +
                                                        s * kStageK + 64 * j) + p;
#pragma unroll
      for (int i = 0; i < 4; ++i) r[u][i] = __ldg(src + 2 * i);
    }
  }
  __device__ __forceinline__ void store(uint32_t slot) const {
#pragma unroll
    for (int u = 0; u < kUnits; ++u) {
      int p, t, j;
      unit(u, p, t, j);
      const uint32_t row = slot + (j * BM + t) * 128;
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        const uint32_t* w0 = reinterpret_cast<const uint32_t*>(&r[u][0]);
        const uint32_t* w1 = reinterpret_cast<const uint32_t*>(&r[u][1]);
        const uint32_t* w2 = reinterpret_cast<const uint32_t*>(&r[u][2]);
        const uint32_t* w3 = reinterpret_cast<const uint32_t*>(&r[u][3]);
        const uint32_t at = row + (((4 * p + m) ^ (t & 7)) << 4);
        asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(at), "r"(w0[m]), "r"(w1[m]), "r"(w2[m]),
                     "r"(w3[m]));
      }
    }
    // for the tensor core (async proxy), before the next barrier. It lowers to MEMBAR.CTA +
    // FENCE.VIEW.ASYNC.S: here, before the next stage's loads are issued, it has no load to wait for
    fence_async_shared();
  }
};

// WREG: a warp's weights of one stage straight to registers, w[j][e] = bytes 8c..8c+7 of row g + 8e of
// 64-k tile j (a row's 64 k are 32 bytes; tile j + 1 sits TN rows on). Rows past NP read row 0 of the
// weight (a valid address) and are never stored.
struct WeightRegs {
  const uint2* src;  // row g, tile 0 of the next stage
  int tile_step;     // uint2 from tile 0 to tile 1 of a stage (TN x 32 bytes)
  __device__ __forceinline__ void init(const MmaArgs& a, int n0, int s_lo, int g, int c) {
    const int nr = n0 < a.NP ? n0 : 0, tn = nr / a.TN, r0 = nr % a.TN;
    src = reinterpret_cast<const uint2*>(a.qw) + (((long long)tn * a.KT + 2 * s_lo) * a.TN + r0 + g) * 4 + c;
    tile_step = a.TN * 4;
  }
  __device__ __forceinline__ void load(uint2 (&w)[2][2]) {
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) w[j][e] = __ldg(src + j * tile_step + e * 32);  // row g + 8: 8 x 32 bytes on
    src += 2 * tile_step;
  }
};

// acc += W (the warpgroup's 64 rows) x X^T (BM tokens) over one 128-k slot: per 64-k tile, each warp
// decodes its fragment's four k16 A fragments (from the slot's weight chunks wt, or WREG: from the
// words in wr), then the warpgroup issues four wgmmas (B: the tile's x chunk, step u 32 bytes in) as
// one group
template <typename T, int WG, int BM, bool WREG>
__device__ __forceinline__ void slot_wgmma(float (&acc)[BM / 8][4], const uint4* wt, const uint2 (&wr)[2][2],
                                           const uint4* sz, uint32_t xs, bool asym, int g, int c, bool first) {
  float(&d)[BM / 2] = reinterpret_cast<float(&)[BM / 2]>(acc);
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    uint32_t sc[1][2], mz[1][2];
    frag_sz<T, 1>(sc, mz, sz, j, g, asym);
    uint32_t af[2][2][4];  // [h][u]: step 2h + u
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if constexpr (WREG)
        decode_words<T>(af[h], h ? wr[j][0].y : wr[j][0].x, h ? wr[j][1].y : wr[j][1].x, sc[0], mz[0]);
      else
        decode_af<T>(af[h], wt, j, h, g, c, sc[0], mz[0]);
    }
    wg_fence();
#pragma unroll
    for (int u = 0; u < 4; ++u)
      Wgmma<T, BM>::run(!first || j + u > 0, d, af[u >> 1][u & 1], desc_k128(xs + j * BM * 128 + 32 * u));
    wg_commit();
    wg_wait<1>();
  }
}
#endif  // TP_WGMMA

constexpr int kAhead = 2;  // WREG: stages between a weight load and its decode

template <typename T, int WG, int BM, bool WREG>
__global__ void __launch_bounds__(WG * 128, 1) w4_wgmma_kernel(const MmaArgs a) {
#ifdef TP_WGMMA
  using S = WgSlot<WG, BM, WREG>;
  extern __shared__ uint4 smem_raw[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t base = (raw + 1023) & ~1023u;  // the launch adds 1 KiB for this
  const char* smem = reinterpret_cast<const char*>(smem_raw) + (base - raw);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  const int n0 = (blockIdx.y * WG * 4 + warp) * 16;
  const int S_all = a.K / kStageK;
  const int per = (S_all + a.split_k - 1) / a.split_k;
  const int s_lo = min(S_all, static_cast<int>(blockIdx.z) * per), n_st = min(S_all, s_lo + per) - s_lo;
  const bool asym = a.zeros != nullptr;
  uint2 wq[WREG ? kAhead : 1][2][2];  // WREG: the weights of the next kAhead stages
  WeightRegs wregs;
  if constexpr (WREG) {
    wregs.init(a, n0, s_lo, g, c);
#pragma unroll
    for (int b = 0; b < kAhead; ++b)
      if (b < n_st) wregs.load(wq[b]);
  }
  WeightFeed<T, 1, !WREG> wf;
  wf.init(a, base + S::kX, S::kW / 16, n0, s_lo, warp, lane);
  XFeed<T, WG, BM> xf;
  for (int s = 0; s < a.stages - 1; ++s) {
    if (s < n_st) wf.issue(a, s * S::kSize);
    cp_async_commit();
  }
  if (n_st > 0) xf.load(a, s_lo), xf.store(base);
  if (n_st > 1) xf.load(a, s_lo + 1);
  float acc[BM / 8][4];  // the first wgmma writes them (scale-d 0): a zeroing here would serialize every wgmma
  int rd = 0, wr = a.stages - 1;
  auto stage = [&](int i, uint2(&w)[2][2]) {
    wait_ring(a.stages);
    __syncthreads();  // slot rd is complete for every thread (x: stored and fenced); every warp is done with slot wr
    if (i + a.stages - 1 < n_st) wf.issue(a, wr * S::kSize);
    cp_async_commit();
    const char* slot = smem + rd * S::kSize;
    slot_wgmma<T, WG, BM, WREG>(acc, reinterpret_cast<const uint4*>(slot + S::kX) + warp * 64, w,
                                reinterpret_cast<const uint4*>(slot + S::kX + S::kW) + warp * kSzChunks,
                                base + rd * S::kSize, asym, g, c, i == 0);
    if constexpr (WREG)
      if (i + kAhead < n_st) wregs.load(w);  // stage i + kAhead into the registers just decoded
    rd = rd + 1 == a.stages ? 0 : rd + 1;
    wr = wr + 1 == a.stages ? 0 : wr + 1;
    if (i + 1 < n_st) xf.store(base + rd * S::kSize);  // stage i + 1's slot: its last reader finished 2 stages ago
    if (i + 2 < n_st) xf.load(a, s_lo + i + 2);
  };
  if constexpr (WREG) {
    for (int i0 = 0; i0 < n_st; i0 += kAhead)
#pragma unroll
      for (int b = 0; b < kAhead; ++b)
        if (i0 + b < n_st) stage(i0 + b, wq[b]);  // b a constant: the ring's registers by name
  } else {
    for (int i = 0; i < n_st; ++i) stage(i, wq[0]);
  }
  wg_wait<0>();
#pragma unroll
  for (int t = 0; t < BM / 8; ++t)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      pin(acc[t][e]);
      if (n_st == 0) acc[t][e] = 0.f;  // an empty K slice (split-K past the stages)
    }
  cp_async_wait<0>();
  store_sliced<T, 1, BM / 8>(a.o, reinterpret_cast<const float(&)[1][BM / 8][4]>(acc), n0, g, c, n0 < a.NP,
                             blockIdx.y * gridDim.x + blockIdx.x, blockIdx.x * BM);
#endif
}

template <typename T, int WG, int BM, bool WREG>
int launch(const MmaArgs& a, cudaStream_t s) {
  const int smem = a.stages * WgSlot<WG, BM, WREG>::kSize + 1024;
  static int raised = 0;  // the largest dynamic shared memory allowed so far (one attribute call per size)
  if (smem > raised) {
    const cudaError_t e =
        cudaFuncSetAttribute(w4_wgmma_kernel<T, WG, BM, WREG>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return static_cast<int>(e);
    raised = smem;
  }
  const dim3 grid((a.M + BM - 1) / BM, (a.NP + WG * 64 - 1) / (WG * 64), a.split_k);
  w4_wgmma_kernel<T, WG, BM, WREG><<<grid, WG * 128, smem, s>>>(a);
  return static_cast<int>(cudaGetLastError());
}

// BM caps the token tile: a call with fewer tokens runs the smallest tile that covers them (two
// warpgroups: at least 64, each thread a whole unit of x)
template <typename T, int WG, bool WREG>
int by_bm(const MmaArgs& a, int bm, cudaStream_t s) {
  if (WG == 1 && (bm <= 32 || a.M <= 32)) return launch<T, 1, 32, WREG>(a, s);
  if (bm <= 64 || a.M <= 64) return launch<T, WG, 64, WREG>(a, s);
  return launch<T, WG, 128, WREG>(a, s);
}

template <typename T>
int by_bn(const MmaArgs& a, int bn, int bm, bool wreg, cudaStream_t s) {
  if (wreg) return bn == 64 ? by_bm<T, 1, true>(a, bm, s) : by_bm<T, 2, true>(a, bm, s);
  return bn == 64 ? by_bm<T, 1, false>(a, bm, s) : by_bm<T, 2, false>(a, bm, s);
}

}  // namespace

// y [M, N] = x [M, K] W^T (+ bias) for any M >= 1 on sm_90a; dtype 0 = bf16, 1 = fp16 (x, scales, bias, y).
// bn: weight rows per CTA (64: one warpgroup, 128: two), bm: token tile (32 (bn 64 only), 64, 128; capped
// by M), stages: ring depth (3-5), wreg: the weights straight to registers (WREG above) or through the ring. Returns 0, -1 for bad arguments, else the CUDA error (the kernels
// are empty unless built for sm_90a: the host calls this on compute capability 9.0 only). split_k > 1 needs ws (fp32 [split_k * M * N], scratch) and counters
// (int32, one per row tile x token tile, zeroed, left zeroed).
extern "C" int turbopack_w4_wgmma(const void* x, const void* qw, const void* scales, const void* zeros,
                                  const void* bias, void* y, void* ws, void* counters, int M, int N, int NP, int K,
                                  int KT, int KGP, int TN, int G, int stride_xm, int split_k, int bn, int bm,
                                  int stages, int wreg, int dtype, void* stream) {
  MmaArgs a;
  if (!mma_args(a, x, qw, scales, zeros, bias, y, ws, counters, M, N, NP, K, KT, KGP, TN, G, stride_xm, split_k, stages,
                dtype) ||
      (bn != 64 && bn != 128) || (bm != 32 && bm != 64 && bm != 128))
    return -1;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  return dtype == 0 ? by_bn<__nv_bfloat16>(a, bn, bm, wreg != 0, s) : by_bn<__half>(a, bn, bm, wreg != 0, s);
}

