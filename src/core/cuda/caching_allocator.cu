// Caching device allocator; see caching_allocator.h. One mutex guards everything: allocation
// is a hash lookup and a vector pop once warm, so contention is not a concern.
#include "core/cuda/cuda_check.h"  // first: it configures fmt for nvcc

#include "core/cuda/caching_allocator.h"

#include <algorithm>
#include <bit>

#include "core/cuda/device.h"

namespace genrec::cuda {

CachingAllocator& CachingAllocator::global() {
  static CachingAllocator* allocator = new CachingAllocator();  // intentionally leaked
  return *allocator;
}

size_t CachingAllocator::size_class(size_t bytes) {
  constexpr size_t kGranule = 512;
  constexpr size_t kLargeFrom = size_t{1} << 20;
  if (bytes <= kLargeFrom) return std::max(kGranule, (bytes + kGranule - 1) / kGranule * kGranule);
  GENREC_CHECK(bytes < (size_t{1} << 62), "device allocation of {} bytes is too large", bytes);
  const size_t step = std::bit_floor(bytes) / 4;
  return (bytes + step - 1) / step * step;
}

void* CachingAllocator::allocate(size_t bytes, cudaStream_t stream) {
  const size_t size = size_class(bytes);
  int device = 0;
  GENREC_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex_);
  ++stats_.num_allocs;
  void* ptr = nullptr;
  auto it = free_.find(PoolKey{device, stream, size});
  if (it != free_.end() && !it->second.empty()) {
    ptr = it->second.back();
    it->second.pop_back();
    ++stats_.num_cache_hits;
  } else {
    cudaError_t err = cudaMalloc(&ptr, size);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      release_cached_locked(device);
      err = cudaMalloc(&ptr, size);
    }
    if (err != cudaSuccess) {
      cudaGetLastError();
      fail(
          "cudaMalloc of {} bytes (request {}) failed on device {}: {}; {} bytes in use, {} "
          "reserved",
          size, bytes, device, cudaGetErrorString(err), stats_.bytes_in_use, stats_.bytes_reserved);
    }
    ++stats_.num_cuda_mallocs;
    stats_.bytes_reserved += size;
  }
  live_.emplace(ptr, Block{size, device, stream});
  stats_.bytes_in_use += size;
  stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use);
  return ptr;
}

void CachingAllocator::free(void* ptr) {
  if (ptr == nullptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = live_.find(ptr);
  GENREC_CHECK(it != live_.end(), "CachingAllocator::free of {} which it did not allocate", ptr);
  const Block block = it->second;
  live_.erase(it);
  free_[PoolKey{block.device, block.stream, block.size}].push_back(ptr);
  stats_.bytes_in_use -= block.size;
}

void CachingAllocator::release_cached_locked(int only_device) {
  int current = 0;
  GENREC_CUDA_CHECK(cudaGetDevice(&current));
  for (auto it = free_.begin(); it != free_.end();) {
    const PoolKey& key = it->first;
    if (only_device >= 0 && key.device != only_device) {
      ++it;
      continue;
    }
    if (!it->second.empty() && key.device != current) GENREC_CUDA_CHECK(cudaSetDevice(key.device));
    for (void* ptr : it->second) {
      GENREC_CUDA_CHECK(cudaFree(ptr));
      ++stats_.num_cuda_frees;
      stats_.bytes_reserved -= key.size;
    }
    if (!it->second.empty() && key.device != current) GENREC_CUDA_CHECK(cudaSetDevice(current));
    it = free_.erase(it);
  }
}

void CachingAllocator::release_cached() {
  std::lock_guard<std::mutex> lock(mutex_);
  release_cached_locked(-1);
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void CachingAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.peak_bytes_in_use = stats_.bytes_in_use;
}

}  // namespace genrec::cuda
