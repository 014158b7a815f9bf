// The speed of light of one launch that streams B bytes from HBM (benchmarks/device/sol.py): the
// floor a decode kernel of that size can reach, launch, ramp and tail included, which
// bytes / copy bandwidth leaves out. Two ways to keep bytes in flight, each summing every 32-bit
// word (mod 2^32, into *sum) so the caller can check that every byte was read:
//   mode 0  ld.global.nc.v4, kUnroll independent 16-byte loads per thread before the first add
//           (v5-v7's way: registers hold the bytes in flight);
//   mode 1  cp.async.bulk (sm_90+, the TMA's 1D copy): one thread per CTA keeps a ring of
//           kStages x kChunk bytes in flight into shared memory, completed on mbarriers
//           (shared memory holds them: 128 KiB a CTA, without a register per byte).
// Each CTA streams one contiguous slice. pdl: trigger the next launch at once and wait for the
// previous one only before the sum's atomic (weights are read-only, as in the decode kernels).
// sol_read_routed: the grouped MoE's floor at T = 1. src is E experts' bytes back to back; each
// CTA first reads the k selected ids from global memory (as route_block does: the expert decides
// the address, so no weight byte can be asked for before the ids arrive), then streams its slice
// of expert ids[b % k] with the mode-0 reader.
#include "common.cuh"  // pdl_wait / pdl_trigger, launch_with (headers from the runtime's csrc)

namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 8;
constexpr int kChunk = 32 * 1024;
constexpr int kStages = 4;

__device__ __forceinline__ uint4 load_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// the CTA's words summed into *sum: a warp shuffle, then one atomic a warp
__device__ __forceinline__ void add_sum(unsigned v, unsigned* sum, bool pdl) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(0xffffffffu, v, d);
  if (pdl) pdl_wait();
  if ((threadIdx.x & 31) == 0) atomicAdd(sum, v);
}

// slice [lo, hi) of the CTA in 16-byte units
__device__ __forceinline__ void slice(long long n16, long long& lo, long long& hi) {
  const long long per = (n16 + gridDim.x - 1) / gridDim.x;
  lo = min(n16, (long long)blockIdx.x * per);
  hi = min(n16, lo + per);
}

// this thread's sum of the words of [lo, hi), kUnroll 16-byte loads in flight
__device__ __forceinline__ unsigned sum_range(const uint4* src, long long lo, long long hi) {
  unsigned acc = 0;
  long long i = lo + threadIdx.x;
  for (; i + (kUnroll - 1) * kThreads < hi; i += kUnroll * kThreads) {
    uint4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) v[u] = load_stream(src + i + u * kThreads);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) acc += v[u].x + v[u].y + v[u].z + v[u].w;
  }
  for (; i < hi; i += kThreads) {
    const uint4 v = load_stream(src + i);
    acc += v.x + v.y + v.z + v.w;
  }
  return acc;
}

__global__ void __launch_bounds__(kThreads) read_ldg(const uint4* src, long long n16, unsigned* sum, int pdl) {
  if (pdl) pdl_trigger();
  long long lo, hi;
  slice(n16, lo, hi);
  add_sum(sum_range(src, lo, hi), sum, pdl);
}

// gridDim.x / k CTAs per selected expert (the caller makes it a multiple of k)
__global__ void __launch_bounds__(kThreads) read_routed(const uint4* src, long long per16, const int* ids, int k,
                                                        unsigned* sum, int pdl) {
  if (pdl) pdl_trigger();
  const int per_expert = gridDim.x / k, b = blockIdx.x / per_expert, part = blockIdx.x % per_expert;
  const long long e = __ldg(ids + b);  // the dependent read every routed kernel starts with
  const long long chunk = (per16 + per_expert - 1) / per_expert;
  const long long lo = min(per16, part * chunk), hi = min(per16, lo + chunk);
  add_sum(sum_range(src + e * per16, lo, hi), sum, pdl);
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
#endif

// mode 1: stage s of the ring holds chunk j (j % kStages == s) of the CTA's slice; full[s] completes
// when its bytes have landed. Thread 0 refills a slot after every thread has summed it (the
// __syncthreads, then a proxy fence: the async copy must not overtake the generic reads).
__global__ void __launch_bounds__(kThreads) read_bulk(const uint4* src, long long n16, unsigned* sum, int pdl) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ uint4 ring[];
  __shared__ __align__(8) unsigned long long full[kStages];
  if (pdl) pdl_trigger();
  long long lo, hi;
  slice(n16, lo, hi);
  constexpr int kChunk16 = kChunk / 16;
  const long long chunks = (hi - lo + kChunk16 - 1) / kChunk16;
  auto issue = [&](long long j) {
    const int s = static_cast<int>(j % kStages);
    const long long first = lo + j * kChunk16;
    const unsigned bytes = static_cast<unsigned>(min((long long)kChunk16, hi - first) * 16);
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(&full[s])), "r"(bytes)
                 : "memory");
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
            smem_addr(ring + s * kChunk16)),
        "l"(src + first), "r"(bytes), "r"(smem_addr(&full[s]))
        : "memory");
  };
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s)
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(smem_addr(&full[s])) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    for (long long j = 0; j < min((long long)kStages, chunks); ++j) issue(j);
  }
  __syncthreads();
  unsigned acc = 0;
  for (long long j = 0; j < chunks; ++j) {
    const int s = static_cast<int>(j % kStages);
    const unsigned parity = static_cast<unsigned>((j / kStages) & 1);
    asm volatile(
        "{\n .reg .pred p;\n WAIT:\n"
        " mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
        " @!p bra WAIT;\n}\n" ::"r"(smem_addr(&full[s])),
        "r"(parity)
        : "memory");
    const int n = static_cast<int>(min((long long)kChunk16, hi - (lo + j * kChunk16)));
    for (int i = threadIdx.x; i < n; i += kThreads) {
      const uint4 v = ring[s * kChunk16 + i];
      acc += v.x + v.y + v.z + v.w;
    }
    __syncthreads();
    if (threadIdx.x == 0 && j + kStages < chunks) {
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      issue(j + kStages);
    }
  }
  add_sum(acc, sum, pdl);
#endif
}

}  // namespace

// *sum += the sum of src's 32-bit words (mod 2^32) over n16 16-byte units, read by `ctas` CTAs in
// `mode` (0 ldg, 1 bulk: sm_90+); pdl: a programmatic dependent launch. Returns 0, -1 bad
// arguments, or the CUDA error.
extern "C" int sol_read(const void* src, long long n16, void* sum, int ctas, int mode, int pdl, void* stream) {
  if (n16 < 1 || ctas < 1 || (mode != 0 && mode != 1) || reinterpret_cast<uintptr_t>(src) % 16 != 0) return -1;
  const uint4* s = static_cast<const uint4*>(src);
  unsigned* out = static_cast<unsigned*>(sum);
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  const Launch how{pdl != 0, 1};
  if (mode == 0)
    return static_cast<int>(launch_with(read_ldg, dim3(ctas), dim3(kThreads), 0, st, how, s, n16, out, pdl));
  static bool raised = false;
  constexpr int smem = kStages * kChunk;
  if (!raised) {
    const cudaError_t e = cudaFuncSetAttribute(read_bulk, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return static_cast<int>(e);
    raised = true;
  }
  return static_cast<int>(launch_with(read_bulk, dim3(ctas), dim3(kThreads), smem, st, how, s, n16, out, pdl));
}

// *sum += the sum of the words of the k experts ids[0..k) (each per16 16-byte units of src), by
// `ctas` CTAs (a multiple of k). Returns 0, -1 bad arguments, or the CUDA error.
extern "C" int sol_read_routed(const void* src, long long per16, const int* ids, int k, void* sum, int ctas, int pdl,
                               void* stream) {
  if (per16 < 1 || k < 1 || ctas < k || ctas % k != 0 || reinterpret_cast<uintptr_t>(src) % 16 != 0) return -1;
  return static_cast<int>(launch_with(read_routed, dim3(ctas), dim3(kThreads), 0, static_cast<cudaStream_t>(stream),
                                      Launch{pdl != 0, 1}, static_cast<const uint4*>(src), per16, ids, k,
                                      static_cast<unsigned*>(sum), pdl));
}
