// Hopper's tensor memory accelerator (sm_90a only): one thread hands a tile copy to the TMA unit,
// which writes shared memory in the tensor map's layout (tensor_map.h) and counts the bytes on a
// shared-memory barrier; the threads that read the tile wait on the barrier's phase. No thread
// spends registers or instructions on addresses, and the copies need no proxy fence before wgmma
// reads them (both are the async proxy). Include from .cu files only.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "ops/cuda/wgmma.cuh"  // GENREC_WGMMA

#if GENREC_WGMMA

namespace genrec::cuda::tma {

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// A barrier that completes a phase when one thread has arrived and the bytes it announced have
// landed; before any other thread uses it, a __syncthreads must follow.
__device__ __forceinline__ void init_barrier(uint64_t* barrier) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(shared_address(barrier)));
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// The calling thread arrives and announces `bytes` more of copies for the barrier's phase.
__device__ __forceinline__ void arrive_expecting(uint64_t* barrier, uint32_t bytes) {
  asm volatile(
      "mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(shared_address(barrier)),
      "r"(bytes)
      : "memory");
}

// Announces `bytes` more of copies for the barrier's phase without arriving (a later
// arrive_expecting completes it).
__device__ __forceinline__ void expect_bytes(uint64_t* barrier, uint32_t bytes) {
  asm volatile("mbarrier.expect_tx.shared::cta.b64 [%0], %1;\n" ::"r"(shared_address(barrier)),
               "r"(bytes)
               : "memory");
}

// Waits until the barrier has completed the phase with parity `phase`.
__device__ __forceinline__ void wait(uint64_t* barrier, uint32_t phase) {
  uint32_t done = 0;
  while (!done) {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        " selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(shared_address(barrier)), "r"(phase)
        : "memory");
  }
}

// Box (x, y, z) of a 3-D tensor map into dst (1024-byte aligned for the 128-byte swizzle).
__device__ __forceinline__ void load_box(void* dst, const CUtensorMap& map, uint64_t* barrier,
                                         int x, int y, int z) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(shared_address(dst)),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(x), "r"(y), "r"(z), "r"(shared_address(barrier))
      : "memory");
}

}  // namespace genrec::cuda::tma

#endif
