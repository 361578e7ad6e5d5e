// CUDA side of Tensor's device hooks: memory comes from the caching allocator (for the legacy
// default stream, which Tensor's synchronous copies and memsets also use), so a Tensor freed and
// re-created with a similar size costs no cudaMalloc.
#include "core/cuda/cuda_check.h"  // first: it configures fmt for nvcc

#include <cstdio>

#include "core/cuda/caching_allocator.h"
#include "core/tensor.h"

namespace genrec {

void* device_alloc(size_t bytes) {
  return cuda::CachingAllocator::global().allocate(bytes);
}

void device_free(void* ptr) {
  // Called from Tensor's storage deleter, which must not throw.
  try {
    cuda::CachingAllocator::global().free(ptr);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "genrec: device_free: %s\n", e.what());
  }
}

void device_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  cudaMemcpyKind kind =
      dst_device == Device::kCUDA
          ? (src_device == Device::kCUDA ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
          : cudaMemcpyDeviceToHost;
  GENREC_CUDA_CHECK(cudaMemcpy(dst, src, bytes, kind));
}

void device_memset_zero(void* ptr, size_t bytes) {
  GENREC_CUDA_CHECK(cudaMemset(ptr, 0, bytes));
}

bool cuda_available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return count > 0;
}

}  // namespace genrec
