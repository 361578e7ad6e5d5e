#include "core/cuda/cuda_check.h"  // first: it configures fmt for nvcc

#include "embedding/cuda/device_removal_log.h"

#include <algorithm>

#include "core/error.h"
#include "embedding/cuda/device_alloc.h"
#include "embedding/removal_log.h"

namespace genrec::cuda {
namespace {

constexpr int64_t kMinCapacity =
    1 << 12;  // entries (64 KiB): a table that seldom removes stays small

}  // namespace

DeviceRemovalLog::DeviceRemovalLog() {
  try {
    GENREC_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&sink_.count), sizeof(uint64_t)));
    GENREC_CUDA_CHECK(cudaMemset(sink_.count, 0, sizeof(uint64_t)));
    GENREC_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&snapshot_), sizeof(uint64_t)));
    GENREC_CUDA_CHECK(cudaEventCreateWithFlags(&snapshot_done_, cudaEventDisableTiming));
    grow(kMinCapacity, 0, nullptr);
  } catch (...) {
    release();
    throw;
  }
}

DeviceRemovalLog::~DeviceRemovalLog() {
  release();
}

void DeviceRemovalLog::release() {
  // Best effort: a destructor must not throw, and a failed free leaves nothing to do.
  cudaFree(sink_.keys);
  cudaFree(sink_.steps);
  cudaFree(sink_.count);
  if (snapshot_ != nullptr) cudaFreeHost(snapshot_);
  if (snapshot_done_ != nullptr) cudaEventDestroy(snapshot_done_);
  sink_ = RemovalSink{};
  snapshot_ = nullptr;
  snapshot_done_ = nullptr;
}

RemovalSink DeviceRemovalLog::make_room(int64_t n, cudaStream_t stream) {
  if (snapshot_bound_ >= 0) {
    const cudaError_t done = cudaEventQuery(snapshot_done_);
    if (done == cudaSuccess) {
      // The count then was *snapshot_; only the calls queued since may have added to it.
      bound_ -= snapshot_bound_ - static_cast<int64_t>(*snapshot_);
      snapshot_bound_ = -1;
    } else if (done == cudaErrorNotReady) {
      cudaGetLastError();  // not an error, but it may stay as the last one for a launch check
    } else {
      GENREC_CUDA_CHECK(done);
    }
  }
  if (bound_ + n > capacity_) {
    bound_ = read_count(stream);
    snapshot_bound_ = -1;  // complete too: it was queued before the work just waited for
    if (bound_ + n > capacity_) {
      // Doubling amortizes the copies; room for one more such call keeps the next one from
      // waiting.
      grow(std::max(2 * capacity_, bound_ + 2 * n), bound_, stream);
    }
  }
  if (snapshot_bound_ < 0 && bound_ + 2 * n > capacity_) {  // the next such call may not fit
    GENREC_CUDA_CHECK(
        cudaMemcpyAsync(snapshot_, sink_.count, sizeof(uint64_t), cudaMemcpyDeviceToHost, stream));
    GENREC_CUDA_CHECK(cudaEventRecord(snapshot_done_, stream));
    snapshot_bound_ = bound_;
  }
  bound_ += n;
  return sink_;
}

std::vector<uint64_t> DeviceRemovalLog::since(uint64_t step, cudaStream_t stream) const {
  std::vector<uint64_t> keys, steps;
  download(read_count(stream), keys, steps, stream);
  return keys_removed_after(keys, steps, step);
}

void DeviceRemovalLog::forget(uint64_t step, cudaStream_t stream) {
  std::vector<uint64_t> keys, steps;
  download(read_count(stream), keys, steps, stream);
  const size_t logged = keys.size();
  keep_removals_after(keys, steps, step);
  const uint64_t kept = keys.size();
  if (kept < logged) {
    if (kept > 0) {
      GENREC_CUDA_CHECK(cudaMemcpyAsync(sink_.keys, keys.data(), sizeof(uint64_t) * kept,
                                        cudaMemcpyHostToDevice, stream));
      GENREC_CUDA_CHECK(cudaMemcpyAsync(sink_.steps, steps.data(), sizeof(uint64_t) * kept,
                                        cudaMemcpyHostToDevice, stream));
    }
    GENREC_CUDA_CHECK(
        cudaMemcpyAsync(sink_.count, &kept, sizeof(kept), cudaMemcpyHostToDevice, stream));
    GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  bound_ = static_cast<int64_t>(kept);
  snapshot_bound_ = -1;  // read_count waited for it, and its count is gone
}

int64_t DeviceRemovalLog::read_count(cudaStream_t stream) const {
  uint64_t count = 0;
  GENREC_CUDA_CHECK(
      cudaMemcpyAsync(&count, sink_.count, sizeof(count), cudaMemcpyDeviceToHost, stream));
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
  // make_room keeps the count within the capacity; past it, kernels wrote out of bounds.
  GENREC_CHECK(static_cast<int64_t>(count) <= capacity_,
               "CUDA dynamic table: removal log count {} exceeds its capacity {}", count,
               capacity_);
  return static_cast<int64_t>(count);
}

void DeviceRemovalLog::download(int64_t count, std::vector<uint64_t>& keys,
                                std::vector<uint64_t>& steps, cudaStream_t stream) const {
  keys.resize(count);
  steps.resize(count);
  if (count == 0) return;
  GENREC_CUDA_CHECK(cudaMemcpyAsync(keys.data(), sink_.keys, sizeof(uint64_t) * count,
                                    cudaMemcpyDeviceToHost, stream));
  GENREC_CUDA_CHECK(cudaMemcpyAsync(steps.data(), sink_.steps, sizeof(uint64_t) * count,
                                    cudaMemcpyDeviceToHost, stream));
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
}

void DeviceRemovalLog::grow(int64_t capacity, int64_t count, cudaStream_t stream) {
  uint64_t *keys = nullptr, *steps = nullptr;
  device_alloc(&keys, capacity, "the removal log");
  try {
    device_alloc(&steps, capacity, "the removal log");
  } catch (...) {
    cudaFree(keys);
    throw;
  }
  // Every kernel that appended to the old arrays has run (the caller synchronized after them).
  if (count > 0) {
    GENREC_CUDA_CHECK(cudaMemcpyAsync(keys, sink_.keys, sizeof(uint64_t) * count,
                                      cudaMemcpyDeviceToDevice, stream));
    GENREC_CUDA_CHECK(cudaMemcpyAsync(steps, sink_.steps, sizeof(uint64_t) * count,
                                      cudaMemcpyDeviceToDevice, stream));
    GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  GENREC_CUDA_CHECK(cudaFree(sink_.keys));
  GENREC_CUDA_CHECK(cudaFree(sink_.steps));
  sink_.keys = keys;
  sink_.steps = steps;
  capacity_ = capacity;
}

}  // namespace genrec::cuda
