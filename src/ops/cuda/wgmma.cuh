// Hopper warpgroup MMA (wgmma.mma_async, sm_90a only): D[64 x N] (+)= A[64 x 16 k] B[16 k x N]
// for the 128 threads of a warpgroup, fp32 accumulators, 16-bit inputs. A comes from shared
// memory or from registers, B from shared memory, each named by a 64-bit descriptor.
//
// Operand tiles are 64 rows of 16-bit values in the 128-byte swizzle layout: columns in blocks
// of 64 (128 bytes a row, 8 KB a block), and in each row the 16-byte chunk c stored at c ^ (row %
// 8), so the eight rows of a core matrix fall in different banks. An operand whose contraction
// runs along a tile's columns is "K-major" (Q, K, V, dO as the second factor of A Bᵀ); one
// whose contraction runs along its rows is "MN-major" (V in P V, Q in dZᵀ Q).
//
// The accumulator fragment of thread t is the mma.sync m16n8 C layout of warp t / 32 over rows
// [16 (t / 32), +16), repeated for every 8 columns; a register A fragment is the mma.sync m16k16 A
// layout of the same rows. Include from .cu files only; everything below exists only when the
// compiler targets sm_90a (GENREC_WGMMA).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GENREC_WGMMA 1
#else
#define GENREC_WGMMA 0
#endif

namespace genrec::cuda::wgmma {

// Element offset of (r, c) in a 64-row swizzled tile (the layout above).
__host__ __device__ constexpr int swizzled_offset(int r, int c) {
  return (c >> 6) * (64 * 64) + r * 64 + ((((c & 63) >> 3) ^ (r & 7)) << 3) + (c & 7);
}

#if GENREC_WGMMA

// The descriptor of a swizzled tile read K-major (kMnMajor false) or MN-major, at its first
// step: start address, leading and stride byte offsets (16-byte units), 128-byte swizzle. K-major:
// 8 rows (1024 bytes) per core-matrix group. MN-major: two such groups per step, and the next
// 64 columns are the next block, 8 KB on. The steps below add their offset to the start address,
// which stays below 2^14 units (shared memory is < 256 KB): one add per instruction.
template <bool kMnMajor>
__device__ __forceinline__ uint64_t descriptor(const void* tile) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(tile));
  constexpr uint64_t kLeading = kMnMajor ? 8192 / 16 : 1;
  return static_cast<uint64_t>((a >> 4) & 0x3FFF) | kLeading << 16 | uint64_t{1024 / 16} << 32 |
         uint64_t{1} << 62;
}

// Step kk (columns [16 kk, 16 kk + 16)) of a K-major tile: 32 bytes a step inside a 128-byte
// row, then the next column block.
__device__ __forceinline__ uint64_t k_step(uint64_t tile, int kk) {
  return tile + (((kk >> 2) * 8192 + (kk & 3) * 32) >> 4);
}

// Step kk (rows [16 kk, 16 kk + 16)) of an MN-major tile from column col0 (a multiple of 64).
__device__ __forceinline__ uint64_t mn_step(uint64_t tile, int kk, int col0 = 0) {
  return tile + (((col0 >> 6) * 8192 + kk * 2048) >> 4);
}

// Orders this thread's register and shared-memory writes before the warpgroup's next wgmma.
__device__ __forceinline__ void fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
// Makes shared-memory writes of the generic proxy (st.shared, cp.async) visible to wgmma.
__device__ __forceinline__ void fence_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Waits until at most N committed groups are pending.
template <int N>
__device__ __forceinline__ void wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Keeps the compiler from moving reads or writes of a wgmma's register operands (accumulators,
// A fragments) across the asynchronous instruction: called before issue and after the wait.
template <typename R, int N>
__device__ __forceinline__ void fence_operands(R (&c)[N][4]) {
  static_assert(std::is_same_v<R, float> || std::is_same_v<R, uint32_t>);
#pragma unroll
  for (int n = 0; n < N; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if constexpr (std::is_same_v<R, float>) {
        asm volatile("" : "+f"(c[n][e])::"memory");
      } else {
        asm volatile("" : "+r"(c[n][e])::"memory");
      }
    }
  }
}

#define GENREC_WG_C4(c, n) "+f"(c[n][0]), "+f"(c[n][1]), "+f"(c[n][2]), "+f"(c[n][3])
#define GENREC_WG_C32(c, n)                                                                   \
  GENREC_WG_C4(c, n), GENREC_WG_C4(c, n + 1), GENREC_WG_C4(c, n + 2), GENREC_WG_C4(c, n + 3), \
      GENREC_WG_C4(c, n + 4), GENREC_WG_C4(c, n + 5), GENREC_WG_C4(c, n + 6),                 \
      GENREC_WG_C4(c, n + 7)
#define GENREC_WG_R32                                                                           \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define GENREC_WG_R64                                                                           \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "  \
  "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "  \
  "%56, %57, %58, %59, %60, %61, %62, %63}"

// Both operands from shared memory: "{regs}, a, b, scale-d, 1, 1, trans-a, trans-b", the
// operand numbers after the accumulators given as strings.
#define GENREC_WG_SS(shape, type, regs, a, b, scale, ta, tb, ...)                                \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " scale                                         \
               ", 0;\nwgmma.mma_async.sync.aligned." shape ".f32." type "." type " " regs ", " a \
               ", " b ", p, 1, 1, " ta ", " tb ";\n}\n"                                          \
               : __VA_ARGS__                                                                     \
               : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(kTransA), "n"(kTransB))
// A from registers: "{regs}, {a0..a3}, b, scale-d, 1, 1, trans-b".
#define GENREC_WG_RS(shape, type, regs, a, b, scale, tb, ...)                                    \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " scale                                         \
               ", 0;\nwgmma.mma_async.sync.aligned." shape ".f32." type "." type " " regs ", " a \
               ", " b ", p, 1, 1, " tb ";\n}\n"                                                  \
               : __VA_ARGS__                                                                     \
               : "r"(a_frag[0]), "r"(a_frag[1]), "r"(a_frag[2]), "r"(a_frag[3]), "l"(desc_b),    \
                 "r"(scale_d), "n"(kTransB))

// c (+)= A B, A and B from shared memory (kTrans*: 1 = MN-major); N is 64 or 128.
template <typename T, int N, int kTransA, int kTransB>
__device__ __forceinline__ void mma(float (&c)[N / 8][4], uint64_t desc_a, uint64_t desc_b,
                                    bool accumulate) {
  static_assert(N == 64 || N == 128, "wgmma::mma: N must be 64 or 128");
  const int scale_d = accumulate ? 1 : 0;
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  if constexpr (N == 64 && kBf16) {
    GENREC_WG_SS("m64n64k16", "bf16", GENREC_WG_R32, "%32", "%33", "%34", "%35", "%36",
                 GENREC_WG_C32(c, 0));
  } else if constexpr (N == 64) {
    GENREC_WG_SS("m64n64k16", "f16", GENREC_WG_R32, "%32", "%33", "%34", "%35", "%36",
                 GENREC_WG_C32(c, 0));
  } else if constexpr (kBf16) {
    GENREC_WG_SS("m64n128k16", "bf16", GENREC_WG_R64, "%64", "%65", "%66", "%67", "%68",
                 GENREC_WG_C32(c, 0), GENREC_WG_C32(c, 8));
  } else {
    GENREC_WG_SS("m64n128k16", "f16", GENREC_WG_R64, "%64", "%65", "%66", "%67", "%68",
                 GENREC_WG_C32(c, 0), GENREC_WG_C32(c, 8));
  }
}

// c (+)= A B, A from registers (m16k16 fragments of the warps' rows), B from shared memory.
template <typename T, int N, int kTransB>
__device__ __forceinline__ void mma(float (&c)[N / 8][4], const uint32_t (&a_frag)[4],
                                    uint64_t desc_b, bool accumulate) {
  static_assert(N == 64 || N == 128, "wgmma::mma: N must be 64 or 128");
  const int scale_d = accumulate ? 1 : 0;
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  if constexpr (N == 64 && kBf16) {
    GENREC_WG_RS("m64n64k16", "bf16", GENREC_WG_R32, "{%32, %33, %34, %35}", "%36", "%37", "%38",
                 GENREC_WG_C32(c, 0));
  } else if constexpr (N == 64) {
    GENREC_WG_RS("m64n64k16", "f16", GENREC_WG_R32, "{%32, %33, %34, %35}", "%36", "%37", "%38",
                 GENREC_WG_C32(c, 0));
  } else if constexpr (kBf16) {
    GENREC_WG_RS("m64n128k16", "bf16", GENREC_WG_R64, "{%64, %65, %66, %67}", "%68", "%69", "%70",
                 GENREC_WG_C32(c, 0), GENREC_WG_C32(c, 8));
  } else {
    GENREC_WG_RS("m64n128k16", "f16", GENREC_WG_R64, "{%64, %65, %66, %67}", "%68", "%69", "%70",
                 GENREC_WG_C32(c, 0), GENREC_WG_C32(c, 8));
  }
}

#undef GENREC_WG_RS
#undef GENREC_WG_SS
#undef GENREC_WG_R64
#undef GENREC_WG_R32
#undef GENREC_WG_C32
#undef GENREC_WG_C4

#endif  // GENREC_WGMMA

}  // namespace genrec::cuda::wgmma
