// Pool of page-locked (pinned) host buffers for host-device staging. cudaHostAlloc is slow (it
// pins and maps pages), so buffers are kept and handed out again: sizes round up to a power of
// two of at least 64 KiB, and a buffer returns to the pool when its handle is destroyed. The
// holder must keep the handle until any async copy from or into it has completed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace genrec::cuda {

class PinnedPool;

// A pinned buffer on loan from a pool; movable, returned to the pool on destruction.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer() { reset(); }
  PinnedBuffer(PinnedBuffer&& o) noexcept
      : pool_(std::exchange(o.pool_, nullptr)),
        data_(std::exchange(o.data_, nullptr)),
        size_(std::exchange(o.size_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    std::swap(pool_, o.pool_);
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t size() const { return size_; }  // capacity in bytes (the size class)
  explicit operator bool() const { return data_ != nullptr; }
  void reset();  // gives the buffer back now

 private:
  friend class PinnedPool;
  PinnedBuffer(PinnedPool* pool, void* data, size_t size) : pool_(pool), data_(data), size_(size) {}
  PinnedPool* pool_ = nullptr;
  void* data_ = nullptr;
  size_t size_ = 0;
};

struct PinnedPoolStats {
  size_t bytes_in_use = 0;    // capacity of buffers on loan
  size_t bytes_reserved = 0;  // everything allocated with cudaHostAlloc and not freed
  int64_t num_acquires = 0;
  int64_t num_cache_hits = 0;
  int64_t num_host_allocs = 0;
};

class PinnedPool {
 public:
  PinnedPool() = default;
  ~PinnedPool();  // frees the cached buffers; buffers on loan must be returned first
  PinnedPool(const PinnedPool&) = delete;
  PinnedPool& operator=(const PinnedPool&) = delete;

  static PinnedPool& global();  // never destroyed
  static size_t size_class(size_t bytes);

  PinnedBuffer acquire(size_t bytes);  // portable (usable from every device), 64-byte aligned
  void release_cached();               // cudaFreeHost every buffer not on loan
  PinnedPoolStats stats() const;

 private:
  friend class PinnedBuffer;
  void give_back(void* data, size_t size);

  mutable std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  PinnedPoolStats stats_;
};

}  // namespace genrec::cuda
