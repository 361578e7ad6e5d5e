// Device arrays of the CUDA table (its storage and its removal log): cudaMalloc that leaves no
// sticky "last error" behind when it fails, so that callers that catch the exception (the
// benchmark skips what does not fit) do not see it again at the next launch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/error.h"

namespace genrec::cuda {

// *ptr = count elements of T, or null and an error naming `what`.
template <typename T>
void device_alloc(T** ptr, int64_t count, const char* what) {
  const cudaError_t err = cudaMalloc(reinterpret_cast<void**>(ptr), sizeof(T) * count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    *ptr = nullptr;
    fail("CUDA dynamic table: cannot allocate {} bytes of device memory for {}: {}",
         sizeof(T) * count, what, cudaGetErrorString(err));
  }
}

}  // namespace genrec::cuda
