// Caching device allocator. A freed block goes to a free list keyed by (device, stream, size
// class) and is handed out again without cudaMalloc, so a loop that allocates the same shapes
// every step stops calling cudaMalloc after its first step. The one decision to know: a block
// is reused only by allocations for the stream it was allocated for, so work queued on that
// stream before the free completes before the next owner's work starts, without any events.
// A block used on a second stream must have that stream synchronised before it is freed.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace genrec::cuda {

struct AllocatorStats {
  size_t bytes_in_use = 0;       // size classes of blocks handed out and not yet freed
  size_t peak_bytes_in_use = 0;  // highest bytes_in_use since start or reset_peak()
  size_t bytes_reserved = 0;     // obtained from cudaMalloc and not yet given back
  int64_t num_allocs = 0;        // allocate() calls
  int64_t num_cache_hits = 0;    // of those, served from a free list
  int64_t num_cuda_mallocs = 0;
  int64_t num_cuda_frees = 0;
};

class CachingAllocator {
 public:
  // The process-wide allocator (never destroyed, so frees during static destruction are safe).
  static CachingAllocator& global();

  // Bytes reserved for a request: up to 1 MiB, the next multiple of 512 B; above, the next
  // quarter step of its power of two (1.25, 1.5, 1.75, 2 MiB, 2.5 MiB, ...), which keeps
  // the waste under 25% while jagged batches of varying token counts still share classes.
  static size_t size_class(size_t bytes);

  // At least 256-byte aligned. On the current device; reused only for `stream`. A cudaMalloc
  // that runs out of memory frees this device's cached blocks and retries once.
  void* allocate(size_t bytes, cudaStream_t stream = nullptr);
  void free(void* ptr);   // ptr from allocate(); null is ignored; an unknown pointer throws
  void release_cached();  // cudaFree every cached (free) block on every device
  AllocatorStats stats() const;
  void reset_peak();

 private:
  struct Block {
    size_t size;
    int device;
    cudaStream_t stream;
  };
  struct PoolKey {
    int device;
    cudaStream_t stream;
    size_t size;
    bool operator==(const PoolKey& o) const {
      return device == o.device && stream == o.stream && size == o.size;
    }
  };
  struct PoolKeyHash {
    size_t operator()(const PoolKey& k) const {
      size_t h = std::hash<size_t>()(k.size);
      h ^= std::hash<const void*>()(k.stream) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
      return h ^ (static_cast<size_t>(k.device) * 0x100000001b3ull);
    }
  };

  void release_cached_locked(int only_device);  // only_device < 0: all devices

  mutable std::mutex mutex_;
  std::unordered_map<void*, Block> live_;
  std::unordered_map<PoolKey, std::vector<void*>, PoolKeyHash> free_;
  AllocatorStats stats_;
};

// A typed device array from the global caching allocator, freed (returned to the cache) when
// destroyed. For op scratch space and tests; count 0 holds no memory.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(int64_t count, cudaStream_t stream = nullptr) : count_(count) {
    if (count > 0) {
      data_ = static_cast<T*>(
          CachingAllocator::global().allocate(static_cast<size_t>(count) * sizeof(T), stream));
    }
  }
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), count_(std::exchange(o.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(count_, o.count_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* data() const { return data_; }
  int64_t size() const { return count_; }
  size_t bytes() const { return static_cast<size_t>(count_) * sizeof(T); }
  void reset() {
    if (data_ != nullptr) CachingAllocator::global().free(data_);
    data_ = nullptr;
    count_ = 0;
  }

 private:
  T* data_ = nullptr;
  int64_t count_ = 0;
};

}  // namespace genrec::cuda
