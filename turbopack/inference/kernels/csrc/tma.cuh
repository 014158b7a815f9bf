// Hopper's asynchronous copies and the mbarriers they complete on (sm_90a: the warp-specialized
// kernels w4_wgws.cu and i8_wgws.cu). A producer thread arms a stage's `full` barrier with the bytes
// it will copy (expect_tx) and issues the copies, which count those bytes down as they land; the
// consumers wait on its phase parity and, once done with the slot, arrive on its `empty` barrier.
// Only under TP_WGMMA (wgmma.cuh): the kernels' bodies are empty elsewhere.
#pragma once
#include <cuda.h>  // CUtensorMap: the 128-byte tensor map a tiled copy reads (a __grid_constant__ parameter)
#include <stdint.h>

#include "wgmma.cuh"

namespace {

#ifdef TP_WGMMA
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done)
                 : "r"(bar), "r"(parity)
                 : "memory");
  } while (!done);
}
// The warp-specialized kernels' ring: `stages` slots, each with a `full` mbarrier (the producer's
// expect-tx, one arrival) and an `empty` one (the 8 consumer warps' arrivals), initialized by thread 0
// and made visible to the async proxy (the copies complete on them) before any thread uses them
__device__ __forceinline__ void ring_init(uint32_t full, uint32_t empty, int stages) {
  if (threadIdx.x == 0) {
    for (int s = 0; s < stages; ++s) mbar_init(full + 8 * s, 1), mbar_init(empty + 8 * s, 8);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
}
// A position in that ring, stage i's slot (i mod stages) and its pass's parity, counted rather than
// divided (run 31: a stage's runtime divisions sat on the W4 producer's critical path)
struct RingPos {
  int slot = 0, phase = 0;
  __device__ __forceinline__ void next(int stages) {
    if (++slot == stages) slot = 0, phase ^= 1;
  }
};
// true in one lane of the (converged) warp: a producer loop run by a whole warp keeps its addresses
// warp-uniform, in uniform registers, where one thread's loop made ptxas wrap every copy in a loop
// over the lanes' distinct operands (ELECT, R2UR, BRA.U.ANY)
__device__ __forceinline__ bool elect_one() {
  uint32_t p;
  asm volatile("{\n.reg .pred e;\nelect.sync _|e, 0xffffffff;\nselp.u32 %0, 1, 0, e;\n}\n" : "=r"(p));
  return p != 0;
}
// bytes (a multiple of 16, 16-byte aligned both sides) global -> shared by the TMA unit, counted on bar
__device__ __forceinline__ void bulk_copy(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}
// the same, streamed-once weights marked first to leave L2 (x, scales and zeros stay)
__device__ __forceinline__ void bulk_copy_hint(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar,
                                               uint64_t policy) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;\n" ::"r"(
          dst),
      "l"(src), "r"(bytes), "r"(bar), "l"(policy)
      : "memory");
}
// The box of a 2-D tensor map at element (c0 innermost, c1) into shared memory, in the map's swizzle;
// elements past the tensor's edge arrive as zeros and still count their bytes on bar
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void tma_load_2d_hint(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t bar,
                                                 uint64_t policy) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.L2::cache_hint"
      " [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar), "l"(policy)
      : "memory");
}
// Every thread of every CTA of the cluster (not warp-aligned: the producer warp's copying thread
// arrives later than its lanes): release what it wrote, acquire what the others wrote
__device__ __forceinline__ void cluster_sync_all() {
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}
// The ring's first byte (base, the 1024-aligned shared address) as a generic pointer: the warp-
// specialized kernels' cluster split-K reuses the idle ring as cluster_reduce's scratch
__device__ __forceinline__ float4* ring_scratch(uint4* smem_raw, uint32_t base) {
  return reinterpret_cast<float4*>(reinterpret_cast<char*>(smem_raw) +
                                   (base - static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw))));
}
#endif  // TP_WGMMA

// The shared memory one CTA may take on sm90 (cuda_build.SM90_SMEM_MAX): the warp-specialized
// kernels' rings are as deep as it holds
constexpr int kSmemMax = 227 * 1024;

// CLUSTER's launch check, both warp-specialized kernels: at most 8 K slices (the portable cluster),
// and every consumer warp's partials (8 warps x frags float4 columns of 32 lanes) within the ring
inline bool cluster_fits(int slices, int frags, int ring_bytes) {
  return slices <= 8 && (slices == 1 || 8 * frags * 32 * 16 <= ring_bytes);
}

// cuTensorMapEncodeTiled through the runtime's driver entry point (no libcuda link), looked up once
using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
inline EncodeTiled encoder() {
  static EncodeTiled fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q;
    const cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q);
    return e == cudaSuccess && q == cudaDriverEntryPointSuccess ? reinterpret_cast<EncodeTiled>(p) : nullptr;
  }();
  return fn;
}

// rows x cols elements of elem_bytes (1 or 2), row-major with `stride` bytes a row, as boxes of box_rows
// x 128 bytes in the 128-byte swizzle (the K-major layout desc_k128 describes); reads past the edges
// return zeros (OOB fill NONE) and still count their bytes. false: no driver entry point, or the
// pointer or stride is not 16-byte aligned
inline bool row_map_128b(CUtensorMap* m, const void* p, int elem_bytes, int rows, int cols, long long stride,
                         int box_rows) {
  const EncodeTiled fn = encoder();
  if (fn == nullptr || reinterpret_cast<uintptr_t>(p) % 16 != 0 || stride % 16 != 0) return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(stride)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(128 / elem_bytes), static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem[2] = {1, 1};
  return fn(m, elem_bytes == 1 ? CU_TENSOR_MAP_DATA_TYPE_UINT8 : CU_TENSOR_MAP_DATA_TYPE_UINT16, 2, const_cast<void*>(p),
            dims, strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

}  // namespace
