// Shared by the decode kernels (w4.cu, w8.cu): the 16-bit activation types and their mma.sync,
// cp.async, and the split-K store of one warp's 16-row MMA fragment. Everything here is in an
// anonymous namespace: each .cu is its own shared library (no ODR across them).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <utility>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#include <cooperative_groups.h>
#endif

namespace {

// Knockouts, for diagnosis only: benchmarks/device/knockout.py builds a library with
// -DTP_KNOCKOUT=<mask> and times it beside the real one, to see what each part of a kernel costs
// (H200.md's method: time variants that leave one part out). Their results are wrong by design. 0
// in every real build, where each `if constexpr` on it is discarded: the same SASS.
#ifndef TP_KNOCKOUT
#define TP_KNOCKOUT 0
#endif
enum : int {
  kKoStore = 1,  // the split-K reduction (workspace or cluster): each CTA stores its partial sums as y
  kKoMath = 2,   // the weight MMAs and the group scaling (the ring still streams)
  kKoLoad = 4,   // the weight copies (the ring's scales still come; the math reads stale slots)
  kKoScales = 8, // the scale/zero copies: with 4, no copy at all, so the ring's waits return at once
  kKoX = 16,     // x's per-stage loads (load_x): constant fragments, so no stage waits on x
  kKoDecode = 32,  // w4_wgws.cu's weight decode: the packed words go to the wgmma as they are
  kKoEpilogue = 64,  // the warp-specialized kernels' epilogue: no y (the accumulators kept live)
};
constexpr int kKnockout = TP_KNOCKOUT;

template <typename T> struct Half16;
template <> struct Half16<__nv_bfloat16> {
  // w4: OR-ing 0x4300 (128.0) onto a nibble makes 128 + q exactly (q <= 15 fits the 7-bit mantissa)
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
  static __device__ __forceinline__ uint32_t sub2(uint32_t a, uint32_t b) {
    __nv_bfloat162 r = __hsub2(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
  }
  static __device__ __forceinline__ uint32_t mul2(uint32_t a, uint32_t b) {
    __nv_bfloat162 r = __hmul2(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
  }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <> struct Half16<__half> {
  // w4: 0x6400 is 1024.0, whose 10-bit mantissa holds any nibble (and any byte) exactly
  static constexpr uint32_t kMagic = 0x64006400u, kOnes = 0x3C003C00u;
  static constexpr float kBase = 1024.f;
  static __device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_f(float v) { return __float2half_rn(v); }
  static __device__ __forceinline__ uint32_t pack(float a, float b) {
    __half2 p = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&p);
  }
  static __device__ __forceinline__ float2 unpack(uint32_t v) { return __half22float2(*reinterpret_cast<__half2*>(&v)); }
  static __device__ __forceinline__ uint32_t sub2(uint32_t a, uint32_t b) {
    __half2 r = __hsub2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
  }
  static __device__ __forceinline__ uint32_t mul2(uint32_t a, uint32_t b) {
    __half2 r = __hmul2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
  }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

// int8 codes -> 16 bits, exact: lo = codes (0, 1), hi = codes (2, 3) of w as 16-bit pairs (w8.cu's
// decode, w4_wgws.cu's W8A16 A fragments).
//   fp16: (q ^ 0x80) is an unsigned byte u; prmt places it under 0x64 (1024 + u), and one HSUB2 of
//     1152 leaves q (fp16's 10-bit mantissa holds a byte).
//   bf16: bf16 has 8 significant bits, so 128 + u does not fit; 0x43 over the low 7 bits is
//     128 + (q & 0x7F) and 0x43 over the sign bit alone is 128 or 256 (q's bit 7 is the exponent's
//     lowest bit there): one HSUB2 of the two is q.
template <typename T> __device__ __forceinline__ void i8_pairs(uint32_t w, uint32_t& lo, uint32_t& hi);
template <> __device__ __forceinline__ void i8_pairs<__half>(uint32_t w, uint32_t& lo, uint32_t& hi) {
  const uint32_t u = w ^ 0x80808080u;
  lo = Half16<__half>::sub2(prmt(u, 0x64646464u, 0x4140), 0x64806480u);  // (1024 + u) - 1152
  hi = Half16<__half>::sub2(prmt(u, 0x64646464u, 0x4342), 0x64806480u);
}
template <> __device__ __forceinline__ void i8_pairs<__nv_bfloat16>(uint32_t w, uint32_t& lo, uint32_t& hi) {
  const uint32_t m = w & 0x7F7F7F7Fu, s = w & 0x80808080u;
  lo = Half16<__nv_bfloat16>::sub2(prmt(m, 0x43434343u, 0x4140), prmt(s, 0x43434343u, 0x4140));
  hi = Half16<__nv_bfloat16>::sub2(prmt(m, 0x43434343u, 0x4342), prmt(s, 0x43434343u, 0x4342));
}

// w4: (w & 0x000F000F) | magic in one lop3 (0xea = (a & b) | c): nibbles 0 and 4 of w as the 16-bit
// pair (M + q, M + q') (w4.cu's header: the layout's interleave makes them adjacent k)
template <uint32_t kMagic>
__device__ __forceinline__ uint32_t lop3_magic(uint32_t w) {
  uint32_t r;
  asm volatile("lop3.b32 %0, %1, %2, %3, 0xea;\n" : "=r"(r) : "r"(w), "n"(0x000F000F), "n"(kMagic));
  return r;
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src));
}
// The same copy to a 32-bit shared address (a ring's slot base plus constant offsets: no generic ->
// shared conversion per copy)
__device__ __forceinline__ void cp_async16_s(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
// The same copy with an L2 eviction-priority hint (cp.async's .L2::cache_hint, sm_80+): a policy from
// l2_evict_first() marks streamed-once weights first to go, so x, scales and zeros stay in L2.
__device__ __forceinline__ void cp_async16_hint(void* dst, const void* src, uint64_t policy) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "l"(policy));
}
// ... to a 32-bit shared address (a ring slot's fixed base plus an offset)
__device__ __forceinline__ void cp_async16_hint_s(uint32_t dst, const void* src, uint64_t policy) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "l"(policy));
}
__device__ __forceinline__ uint64_t l2_evict_first() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}
// `bytes` (a multiple of 16) from 16-byte aligned global memory into L2, by the TMA unit in the
// background: one instruction for a contiguous range (cp.async.bulk.prefetch, sm_90+; a no-op below)
__device__ __forceinline__ void prefetch_l2(const void* src, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(src), "r"(bytes) : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Programmatic dependent launch (sm_90+; pdl.py has the rule). A kernel launched by launch_kernel() with
// g_pdl set may be scheduled while the previous kernel of the stream runs: before pdl_wait() it may
// read only what no kernel writes (packed weights, scales, zeros); pdl_wait() returns once the
// previous grid has completed with its writes visible (griddepcontrol.wait). Every CTA calls it
// before any other global access and before it exits, so completion stays ordered along a chain.
// pdl_trigger() lets the next kernel's CTAs be scheduled early (they block in their own wait).
// Below sm_90 both are empty (and the attribute has no effect).
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

int g_pdl = 0;  // per library (each .cu is one): launch with PDL; set by turbopack_set_pdl

// How a kernel is launched: PDL (the library's switch, g_pdl, for kernels that pdl_wait before
// reading what the previous grid wrote) and cluster_y > 1: thread-block clusters of 1 x cluster_y x
// 1 CTAs (sm_90+; the split-K CTAs of one row tile, cluster_sum's callers)
struct Launch {
  bool pdl;
  int cluster_y;
  int cluster_z = 1;
};
template <typename... P, typename... A>
cudaError_t launch_with(void (*kern)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, Launch how,
                        A&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = s;
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = how.pdl;
  attr[1].id = cudaLaunchAttributeClusterDimension;
  attr[1].val.clusterDim.x = 1, attr[1].val.clusterDim.y = how.cluster_y, attr[1].val.clusterDim.z = how.cluster_z;
  cfg.attrs = attr, cfg.numAttrs = how.cluster_y * how.cluster_z > 1 ? 2 : 1;
  return cudaLaunchKernelEx(&cfg, kern, std::forward<A>(args)...);
}
// Clusters past 8 CTAs (up to 16 on H100/H200) are non-portable: the kernel must allow them, once
// (`allowed`: the caller's static per kernel, so it is not a per-launch driver call)
template <typename K>
cudaError_t allow_cluster(K kern, int size, bool& allowed) {
  if (size <= 8 || allowed) return cudaSuccess;
  const cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  allowed = e == cudaSuccess;
  return e;
}
// PDL if the library's switch is on, no cluster
template <typename... P, typename... A>
cudaError_t launch_kernel(void (*kern)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, A&&... args) {
  return launch_with(kern, grid, block, smem, s, Launch{g_pdl != 0, 1}, std::forward<A>(args)...);
}

// A kernel's dynamic shared memory cap raised to smem once (past the default 48 KiB; one attribute call,
// `raised` the caller's static for that kernel)
template <typename... P>
cudaError_t raise_smem_once(void (*kern)(P...), bool& raised, int smem) {
  if (raised) return cudaSuccess;
  const cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  raised = e == cudaSuccess;
  return e;
}

// Where a decode kernel's y goes: y [M, N] (+ bias [N]), times an optional fp32 per-row scale
// (row_scale[row * scale_stride]; stride 0: one per-tensor scale), split-K through ws/counters.
struct Out {
  void* y; const void* bias; const float* row_scale; float* ws; int* counters;
  int M, N, split_k, scale_stride;
};

// f(row, tok, v) for each output element this thread holds inside y (row < N, tok < M): element i of
// token column t of fragment r is row n0 + 16r + g + 8*(i/2), token tok0 + 8t + 2c + (i&1) (R
// fragments of 16 rows: w4_mma.cu's warps of 32 rows have two).
template <int R, int NTOK, typename F>
__device__ __forceinline__ void each_out(const Out& o, const float (&out)[R][NTOK][4], int n0, int g, int c, int tok0,
                                         F&& f) {
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int t = 0; t < NTOK; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = n0 + 16 * r + g + 8 * (i >> 1), tok = tok0 + 8 * t + 2 * c + (i & 1);
        if (row < o.N && tok < o.M) f(row, tok, out[r][t][i]);
      }
}

template <typename T>
__device__ __forceinline__ float round16(float v) { return Half16<T>::to_f(Half16<T>::from_f(v)); }

// A gated MLP's activation of a fused gate|up with the roundings of storing gate|up in 16 bits and then
// running kernels.glue.act_mul: h = round(round(act(round g)) * round u), act in fp32, SiLU as torch's
// x / (1 + exp(-x)), GeLU-tanh as x * sigmoid(2 y), y = sqrt(2 / pi) (x + 0.044715 x^3)
enum : int { kActSilu = 1, kActGeluTanh = 2 };
template <typename T>
__device__ __forceinline__ T act_mul(int act, float g, float u) {
  const float gq = round16<T>(g);
  const float e = act == kActGeluTanh ? -1.5957691216057308f * (gq + 0.044715f * gq * gq * gq) : -gq;
  return Half16<T>::from_f(round16<T>(gq / (1.f + expf(e))) * round16<T>(u));
}

// y[tok, row] = v (x the row's scale) (+ bias), rounded to y's dtype
template <typename T>
__device__ __forceinline__ void store_y(const Out& o, int row, int tok, float v) {
  if (o.row_scale != nullptr) v *= o.row_scale[(long long)row * o.scale_stride];
  if (o.bias != nullptr) v += Half16<T>::to_f(static_cast<const T*>(o.bias)[row]);
  static_cast<T*>(o.y)[(long long)tok * o.N + row] = Half16<T>::from_f(v);
}

// A CTA's split-K arrival at its tile's counter, after its partials are written: true for the one
// that completes the count (`arrivals`), which then sees every other CTA's partials. No CTA waits
// for another, so a wrong count cannot hang: it leaves y unwritten. Every thread calls it (two
// __syncthreads).
__device__ __forceinline__ bool arrive_last(const Out& o, int tile, int arrivals) {
  __threadfence();
  __syncthreads();
  __shared__ int last;
  if (threadIdx.x == 0) last = atomicAdd(o.counters + tile, 1) == arrivals - 1;
  __syncthreads();
  if (!last) return false;
  __threadfence();
  return true;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// Split-K inside a thread-block cluster (Hopper's distributed shared memory): the S CTAs that share
// a row tile are one cluster along y (rank = K slice; the launcher made it so), S <= 16. Each warp
// leaves its fp32 partials in its own `scratch` (lane-major float4s: [R][NTOK][32], 512 B a
// fragment at one token column), the cluster barrier (release/acquire) makes them visible, and
// warp w of rank w % S (4 warps, so ranks past 3 only contribute) sums warp w's partials of every
// rank in rank order through DSMEM loads and hands them to store(sum): no global workspace, atomics
// or counter, and the same sums whatever the timing. A second barrier keeps every CTA's shared
// memory alive until its partials have been read. Every thread of the cluster calls it.
// cluster_sum's halves, over fp32 or int32 partials (as their bits in float4 scratch): the warp's
// partials into its scratch; then, past the cluster barrier, every rank's added into `sum` in rank order
__device__ __forceinline__ float as_bits(float v) { return v; }
__device__ __forceinline__ float as_bits(int32_t v) { return __int_as_float(v); }
__device__ __forceinline__ void add_bits(float& s, float v) { s += v; }
__device__ __forceinline__ void add_bits(int32_t& s, float v) { s += __float_as_int(v); }
template <int R, int NTOK, typename V>
__device__ __forceinline__ void cluster_stash(const V (&out)[R][NTOK][4], float4* scratch, int lane) {
  __syncwarp();  // the warp's last ring reads are done before its slots turn into scratch
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int t = 0; t < NTOK; ++t)
      scratch[(r * NTOK + t) * 32 + lane] =
          make_float4(as_bits(out[r][t][0]), as_bits(out[r][t][1]), as_bits(out[r][t][2]), as_bits(out[r][t][3]));
}
template <int R, int NTOK, typename V>
__device__ __forceinline__ void cluster_gather(V (&sum)[R][NTOK][4], int S, const float4* scratch, int lane) {
  cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
  for (int q = 0; q < S; ++q) {
    const float4* peer = cluster.map_shared_rank(scratch, q);
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int t = 0; t < NTOK; ++t) {
        const float4 v = peer[(r * NTOK + t) * 32 + lane];
        add_bits(sum[r][t][0], v.x), add_bits(sum[r][t][1], v.y), add_bits(sum[r][t][2], v.z),
            add_bits(sum[r][t][3], v.w);
      }
  }
}
// The warp-specialized kernels' form (w4_wgws.cu, i8_wgws.cu: 128 sums a thread, where a second array
// spilled): the sums replace the partials in place, on the warps that cluster_sum's rule assigns this
// rank (true there); both cluster barriers are passed before it returns. Every consumer calls it; the
// CTA's other threads meet the two barriers with cluster_sync_all.
template <int R, int NTOK, typename V>
__device__ __forceinline__ bool cluster_reduce(V (&acc)[R][NTOK][4], int S, float4* scratch) {
  cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  cluster_stash<R, NTOK>(acc, scratch, lane);
  cluster.sync();
  const bool mine = warp % S == static_cast<int>(cluster.block_rank());
  if (mine) {
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int t = 0; t < NTOK; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[r][t][e] = 0;
    cluster_gather<R, NTOK>(acc, S, scratch, lane);
  }
  cluster.sync();  // every peer has read this CTA's scratch
  return mine;
}
template <int R, int NTOK, typename F>
__device__ __forceinline__ void cluster_sum(const float (&out)[R][NTOK][4], int S, float4* scratch, F&& store) {
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  cluster_stash<R, NTOK>(out, scratch, lane);
  cluster.sync();
  if (warp % S == static_cast<int>(cluster.block_rank())) {
    float sum[R][NTOK][4] = {};
    cluster_gather<R, NTOK>(sum, S, scratch, lane);
    store(sum);
  }
  cluster.sync();
}

// Is this CTA one of a launched cluster of exactly S (a kernel built for the cluster store, launched
// without the attribute, is an implicit cluster of one and takes the global path)?
__device__ __forceinline__ bool in_cluster_of(int S) {
  return S > 1 && cooperative_groups::this_cluster().num_blocks() == static_cast<unsigned>(S);
}
#endif

// The store of R 16-row fragments (each_out's elements). Split-K: every CTA adds its partial sums into
// the fp32 workspace and arrives at its tile's counter (counters[tile]); the last stores y (+ bias) and
// leaves workspace and counter zeroed. arrivals == 1: y directly, no workspace.
template <typename T, int R, int NTOK>
__device__ __forceinline__ void store_frags_at(const Out& o, const float (&out)[R][NTOK][4], int n0, int g, int c,
                                               bool active, int tile, int arrivals, int tok0 = 0,
                                               float4* scratch = nullptr) {
  pdl_trigger();  // the next grid may be scheduled now (pdl.py: at the store, not after the wait)
  if constexpr ((kKnockout & kKoStore) != 0) {
    if (active) each_out<R, NTOK>(o, out, n0, g, c, tok0, [&](int row, int tok, float v) { store_y<T>(o, row, tok, v); });
    return;
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // scratch: a kernel built for the cluster store (v7's CL), launched in clusters of the tile's
  // `arrivals` CTAs; the check keeps a launch without them (an implicit cluster of one) correct
  if (scratch != nullptr && in_cluster_of(arrivals)) {
    cluster_sum<R, NTOK>(out, arrivals, scratch, [&](const float (&sum)[R][NTOK][4]) {
      if (active) each_out<R, NTOK>(o, sum, n0, g, c, tok0, [&](int row, int tok, float v) { store_y<T>(o, row, tok, v); });
    });
    return;
  }
#endif
  const bool split = arrivals > 1;
  if (split) {
    if (active)
      each_out<R, NTOK>(o, out, n0, g, c, tok0,
                        [&](int row, int tok, float v) { atomicAdd(o.ws + (long long)tok * o.N + row, v); });
    if (!arrive_last(o, tile, arrivals)) return;
  }
  if (active)
    each_out<R, NTOK>(o, out, n0, g, c, tok0, [&](int row, int tok, float v) {
      if (split) v = atomicExch(o.ws + (long long)tok * o.N + row, 0.f);  // read and re-zero
      store_y<T>(o, row, tok, v);
    });
  if (split && threadIdx.x == 0) o.counters[tile] = 0;
}

// One warp's 16-row fragment
template <typename T, int NTOK>
__device__ __forceinline__ void store_tile_at(const Out& o, const float (&out)[NTOK][4], int n0, int g, int c,
                                              bool active, int tile, int arrivals, int tok0 = 0,
                                              float4* scratch = nullptr) {
  store_frags_at<T, 1, NTOK>(o, reinterpret_cast<const float(&)[1][NTOK][4]>(out), n0, g, c, active, tile, arrivals,
                             tok0, scratch);
}

// split-K over blockIdx.y: tile blockIdx.x, one arrival per K slice (scratch: the warp's shared
// memory for the cluster path, where the launch made clusters)
template <typename T, int NTOK>
__device__ void store_tile(const Out& o, const float (&out)[NTOK][4], int n0, int g, int c, bool active,
                           float4* scratch = nullptr) {
  store_tile_at<T, NTOK>(o, out, n0, g, c, active, blockIdx.x, o.split_k, 0, scratch);
}

}  // namespace

// The library's PDL switch (pdl.enabled decides; cuda_build sets it when loading and on refresh_pdl)
extern "C" void turbopack_set_pdl(int on) { g_pdl = on != 0; }
