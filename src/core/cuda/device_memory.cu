// CUDA side of Tensor's device hooks. Plain cudaMalloc for now; the caching allocator
// of the CUDA backend replaces it without changing the hooks.
#include "core/cuda/cuda_check.h"
#include "core/tensor.h"

namespace genrec {

void* device_alloc(size_t bytes) {
  void* ptr = nullptr;
  GENREC_CUDA_CHECK(cudaMalloc(&ptr, bytes));
  return ptr;
}

void device_free(void* ptr) { cudaFree(ptr); }

void device_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  cudaMemcpyKind kind = dst_device == Device::kCUDA
                            ? (src_device == Device::kCUDA ? cudaMemcpyDeviceToDevice
                                                           : cudaMemcpyHostToDevice)
                            : cudaMemcpyDeviceToHost;
  GENREC_CUDA_CHECK(cudaMemcpy(dst, src, bytes, kind));
}

void device_memset_zero(void* ptr, size_t bytes) { GENREC_CUDA_CHECK(cudaMemset(ptr, 0, bytes)); }

bool cuda_available() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

}  // namespace genrec
