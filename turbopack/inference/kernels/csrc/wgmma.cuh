// Hopper's warpgroup MMA (sm_90a only; wgmma.* does not exist on sm_80 or Blackwell): m64nNk16 with
// fp32 accumulators, A (16-bit pairs) from registers, B from shared memory through a matrix
// descriptor. The accumulator layout per warp is mma.sync's C layout per n8 block: register 4i + e
// of warp w holds row 16w + g + 8 (e >> 1), column 8i + 2c + (e & 1). The A registers of warp w are
// mma.m16n8k16's A fragment of rows 16w..16w + 15. Everything but the descriptor exists only under
// TP_WGMMA (device code for sm_90a): a kernel's body is compiled under it, empty elsewhere.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TP_WGMMA 1
#endif

namespace {

// Shared-memory descriptor of a K-major operand in the 128-byte swizzle: rows of 128 bytes (64
// 16-bit k), 8-row groups 1024 bytes apart (stride byte offset), the 16-byte chunk index of each row
// XORed with the row's index mod 8 (the pattern is on address bits [4:6] ^ [7:9], so the operand's
// base must be 1024-byte aligned). The k16 step u of a 64-k row starts 32u bytes in: the hardware
// applies the swizzle to the stepped address. Fields: start >> 4 in [0,14), leading byte offset
// (unused by swizzled K-major; 1) in [16,30), stride byte offset >> 4 in [32,46), layout 1 = 128B
// swizzle in [62,64).
__device__ __forceinline__ uint64_t desc_k128(uint32_t smem_addr) {
  return static_cast<uint64_t>((smem_addr & 0x3FFFF) >> 4) | (1ull << 16) | (static_cast<uint64_t>(1024 >> 4) << 32) |
         (1ull << 62);
}

#ifdef TP_WGMMA
// Register writes the next wgmma reads (A fragments, accumulators) are ordered before it
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Wait until at most N committed groups of this warpgroup are pending
template <int N>
__device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// Shared-memory writes of the generic proxy (st.shared) made visible to the async proxy (wgmma's
// operand reads); then a barrier before the wgmma
__device__ __forceinline__ void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// The compiler may not move reads or writes of v across this point (the accumulators after the
// last wait: wgmma writes them asynchronously)
__device__ __forceinline__ void pin(float& v) { asm volatile("" : "+f"(v)::"memory"); }
__device__ __forceinline__ void pin(int32_t& v) { asm volatile("" : "+r"(v)::"memory"); }  // s8 wgmma's

// D (fp32, N / 2 per thread) = A (64 x 16, registers) x B (16 x N, descriptor) (+ D where acc != 0:
// scale-d, so the first MMA needs no zeroed accumulators, whose writes would serialize the pipeline);
// A and B not negated, B K-major (imm-trans-b 0). TY: the 16-bit type's PTX name; DREGS: the
// accumulators' operand numbers, then A's four, the descriptor's and acc's follow.
#define TP_WGMMA_ASM(SHAPE, TY, DREGS, AREGS, DESC, ACC, ...)                                               \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " ACC ", 0;\nwgmma.mma_async.sync.aligned." SHAPE ".f32." TY \
               "." TY " " DREGS ", " AREGS ", " DESC ", p, 1, 1, 0;\n}\n"                                     \
               : __VA_ARGS__                                                                                \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(acc))
#define TP_D8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
                 "+f"(d[i + 6]), "+f"(d[i + 7])

// The accumulators' operand numbers (asm text is a literal): %0 .. %(n - 1) for the n registers of
// an m64nNk16 (16-bit) or m64nNk32 (8-bit) wgmma with N = 2n; A's, the descriptors and acc follow
#define TP_D16 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
#define TP_D32 TP_D16 \
  ", %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define TP_D64 TP_D32 \
  ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47" \
  ", %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define TP_D128 TP_D64 \
  ", %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79" \
  ", %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95" \
  ", %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111" \
  ", %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"

#define TP_WGMMA_N32(TY) \
  TP_WGMMA_ASM("m64n32k16", TY, "{" TP_D16 "}", "{%16, %17, %18, %19}", "%20", "%21", TP_D8(0), TP_D8(8))
#define TP_WGMMA_N64(TY)                                                                                 \
  TP_WGMMA_ASM("m64n64k16", TY, "{" TP_D32 "}", "{%32, %33, %34, %35}", "%36", "%37", TP_D8(0), TP_D8(8), \
               TP_D8(16), TP_D8(24))
#define TP_WGMMA_N128(TY)                                                                                  \
  TP_WGMMA_ASM("m64n128k16", TY, "{" TP_D64 "}", "{%64, %65, %66, %67}", "%68", "%69", TP_D8(0), TP_D8(8), \
               TP_D8(16), TP_D8(24), TP_D8(32), TP_D8(40), TP_D8(48), TP_D8(56))
#define TP_WGMMA_N256(TY)                                                                                       \
  TP_WGMMA_ASM("m64n256k16", TY, "{" TP_D128 "}", "{%128, %129, %130, %131}", "%132", "%133", TP_D8(0), TP_D8(8), \
               TP_D8(16), TP_D8(24), TP_D8(32), TP_D8(40), TP_D8(48), TP_D8(56), TP_D8(64), TP_D8(72),         \
               TP_D8(80), TP_D8(88), TP_D8(96), TP_D8(104), TP_D8(112), TP_D8(120))

template <typename T, int N>
struct Wgmma {
  static_assert(N == 32 || N == 64 || N == 128 || N == 256, "the token tiles of w4_wgmma.cu and w4_wgws.cu");
  static __device__ __forceinline__ void run(int acc, float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc) {
    constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
    if constexpr (N == 32) {
      if constexpr (kBf16) TP_WGMMA_N32("bf16"); else TP_WGMMA_N32("f16");
    } else if constexpr (N == 64) {
      if constexpr (kBf16) TP_WGMMA_N64("bf16"); else TP_WGMMA_N64("f16");
    } else if constexpr (N == 128) {
      if constexpr (kBf16) TP_WGMMA_N128("bf16"); else TP_WGMMA_N128("f16");
    } else {
      if constexpr (kBf16) TP_WGMMA_N256("bf16"); else TP_WGMMA_N256("f16");
    }
  }
};

// D (N / 2 per thread) = A (64 x 32 8-bit codes) x B (32 x N codes) (+ D where acc != 0), both operands
// K-major in shared memory through descriptors (8-bit wgmma reads A from shared memory here, and has
// no transpose); the accumulator layout is the 16-bit one's. A k32 step is 32 bytes, as a 16-bit k16
// step: desc_k128's geometry serves both (128 codes a swizzled row). Acc picks the codes: int32_t is
// s8 x s8 (exact s32 sums), float is e4m3 x e4m3 (f32 sums, imm-scale-a and -b 1: no negation); both
// run at twice the 16-bit rate
#define TP_WGMMA_K32_ASM(SHAPE, TYPES, TAIL, DREGS, DA, DB, ACC, ...)                                      \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " ACC ", 0;\nwgmma.mma_async.sync.aligned." SHAPE TYPES \
               " " DREGS ", " DA ", " DB ", p" TAIL ";\n}\n"                                               \
               : __VA_ARGS__                                                                            \
               : "l"(da), "l"(db), "r"(acc))
#define TP_D8I(i) "+r"(d[i]), "+r"(d[i + 1]), "+r"(d[i + 2]), "+r"(d[i + 3]), "+r"(d[i + 4]), "+r"(d[i + 5]), \
                  "+r"(d[i + 6]), "+r"(d[i + 7])
// the three token tiles' instructions, C the accumulators' operand constraints (TP_D8I or TP_D8)
#define TP_WGMMA_K32(TYPES, TAIL, C)                                                                           \
  if constexpr (N == 64) {                                                                                     \
    TP_WGMMA_K32_ASM("m64n64k32", TYPES, TAIL, "{" TP_D32 "}", "%32", "%33", "%34", C(0), C(8), C(16), C(24)); \
  } else if constexpr (N == 128) {                                                                             \
    TP_WGMMA_K32_ASM("m64n128k32", TYPES, TAIL, "{" TP_D64 "}", "%64", "%65", "%66", C(0), C(8), C(16), C(24),  \
                     C(32), C(40), C(48), C(56));                                                              \
  } else {                                                                                                     \
    TP_WGMMA_K32_ASM("m64n256k32", TYPES, TAIL, "{" TP_D128 "}", "%128", "%129", "%130", C(0), C(8), C(16),     \
                     C(24), C(32), C(40), C(48), C(56), C(64), C(72), C(80), C(88), C(96), C(104), C(112),     \
                     C(120));                                                                                  \
  }

template <typename Acc, int N>
struct Wgmma8 {
  static_assert(N == 64 || N == 128 || N == 256, "the token tiles of i8_wgws.cu");
  static __device__ __forceinline__ void run(int acc, Acc (&d)[N / 2], uint64_t da, uint64_t db) {
    if constexpr (std::is_same<Acc, float>::value) {
      TP_WGMMA_K32(".f32.e4m3.e4m3", ", 1, 1", TP_D8)
    } else {
      TP_WGMMA_K32(".s32.s8.s8", "", TP_D8I)
    }
  }
};
#endif  // TP_WGMMA

}  // namespace
