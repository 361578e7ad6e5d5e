// Device helpers shared by the CUDA op families (include from .cu files only): T <-> fp32
// conversions, warp reductions and launch sizing. Kernels load T, compute in fp32, store T.
#pragma once

#include "core/cuda/cuda_check.h"  // first: it configures fmt for nvcc

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace genrec::cuda::detail {

__device__ __forceinline__ float to_float(float x) {
  return x;
}
__device__ __forceinline__ float to_float(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

template <typename A>
__device__ __forceinline__ A warp_sum(A x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

constexpr int kThreads = 256;  // threads per block of the element-wise kernels
constexpr int kWarpsPerBlock = kThreads / 32;

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Whether p may be read or written 16 bytes at a time.
inline bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// An attribute of the current device (cached per thread and device).
template <cudaDeviceAttr kAttribute>
int device_attribute() {
  static thread_local int cached_device = -1, cached_value = 0;
  int device = 0;
  GENREC_CUDA_CHECK(cudaGetDevice(&device));
  if (device != cached_device) {
    GENREC_CUDA_CHECK(cudaDeviceGetAttribute(&cached_value, kAttribute, device));
    cached_device = device;
  }
  return cached_value;
}

// Streaming multiprocessors of the current device.
inline int sm_count() {
  return device_attribute<cudaDevAttrMultiProcessorCount>();
}

// Blocks for a grid-stride loop over `work` items of `per_block` each: enough to fill the GPU
// (16 blocks per SM), never more than the work needs.
inline unsigned grid_for(int64_t work, int64_t per_block) {
  const int64_t needed = std::max<int64_t>(1, ceil_div(work, per_block));
  return static_cast<unsigned>(std::min<int64_t>(needed, int64_t{16} * sm_count()));
}

}  // namespace genrec::cuda::detail
