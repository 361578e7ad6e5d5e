// Pinned host buffer pool; see pinned_pool.h.
#include "core/cuda/cuda_check.h"  // first: it configures fmt for nvcc

#include "core/cuda/pinned_pool.h"

#include <algorithm>
#include <bit>
#include <cstdio>

namespace genrec::cuda {

void PinnedBuffer::reset() {
  if (data_ != nullptr) pool_->give_back(data_, size_);
  pool_ = nullptr;
  data_ = nullptr;
  size_ = 0;
}

PinnedPool::~PinnedPool() {
  for (auto& [size, list] : free_) {
    for (void* p : list) {
      if (cudaFreeHost(p) != cudaSuccess) std::fputs("genrec: cudaFreeHost failed\n", stderr);
    }
  }
}

PinnedPool& PinnedPool::global() {
  static PinnedPool* pool = new PinnedPool();  // intentionally leaked
  return *pool;
}

size_t PinnedPool::size_class(size_t bytes) {
  constexpr size_t kMin = size_t{64} << 10;
  GENREC_CHECK(bytes <= (size_t{1} << 62), "pinned buffer of {} bytes is too large", bytes);
  return std::max(kMin, std::bit_ceil(bytes));
}

PinnedBuffer PinnedPool::acquire(size_t bytes) {
  const size_t size = size_class(bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  ++stats_.num_acquires;
  void* data = nullptr;
  auto it = free_.find(size);
  if (it != free_.end() && !it->second.empty()) {
    data = it->second.back();
    it->second.pop_back();
    ++stats_.num_cache_hits;
  } else {
    GENREC_CUDA_CHECK(cudaHostAlloc(&data, size, cudaHostAllocPortable));
    ++stats_.num_host_allocs;
    stats_.bytes_reserved += size;
  }
  stats_.bytes_in_use += size;
  return PinnedBuffer(this, data, size);
}

void PinnedPool::give_back(void* data, size_t size) {
  std::lock_guard<std::mutex> lock(mutex_);
  free_[size].push_back(data);
  stats_.bytes_in_use -= size;
}

void PinnedPool::release_cached() {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& [size, list] : free_) {
    for (void* p : list) {
      GENREC_CUDA_CHECK(cudaFreeHost(p));
      stats_.bytes_reserved -= size;
    }
  }
  free_.clear();
}

PinnedPoolStats PinnedPool::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

}  // namespace genrec::cuda
