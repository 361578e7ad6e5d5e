// The removal log of a CudaDynamicTable, the device twin of RemovalLog (embedding/removal_log.h):
// (key, step) pairs in device memory that the table's kernels append where they remove a row
// (erase, eviction, clear), at an atomicAdd on a device counter. A kernel cannot grow the arrays,
// so before each call that may remove up to n rows the table makes room for n more entries
// (make_room). The host keeps an upper bound of the count, so it reads the real count (a
// synchronization) and grows the arrays only when the bound passes the capacity. Calls may remove
// far fewer rows than their n (a find_or_insert of mostly present keys), so once the next such
// call might not fit, make_room also queues a copy of the count to the host and folds it into the
// bound when a later call finds it done: while the device keeps up with the host, the bound stays
// near the real count and nothing waits.
// Not thread-safe: the table calls it under its lock, on a stream ordered after the work of every
// earlier call.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

namespace genrec::cuda {

// What the kernels see: entry i is (keys[i], steps[i]); a kernel appends at atomicAdd(count, 1).
// count null: the table does not log.
struct RemovalSink {
  uint64_t* keys = nullptr;
  uint64_t* steps = nullptr;
  unsigned long long* count = nullptr;
};

class DeviceRemovalLog {
 public:
  DeviceRemovalLog();
  ~DeviceRemovalLog();
  DeviceRemovalLog(const DeviceRemovalLog&) = delete;
  DeviceRemovalLog& operator=(const DeviceRemovalLog&) = delete;

  // Room for n more entries after the work queued on `stream`, for kernels queued next on it;
  // the sink stays valid until the next make_room or forget. Synchronizes only when the bound
  // passes the capacity.
  RemovalSink make_room(int64_t n, cudaStream_t stream);
  // The keys logged at a step after `step`, sorted and distinct. Synchronizes.
  std::vector<uint64_t> since(uint64_t step, cudaStream_t stream) const;
  // Drops the entries at or before `step`. Synchronizes.
  void forget(uint64_t step, cudaStream_t stream);

 private:
  int64_t read_count(cudaStream_t stream) const;  // synchronizes
  // The entries [0, count) on the host. Synchronizes.
  void download(int64_t count, std::vector<uint64_t>& keys, std::vector<uint64_t>& steps,
                cudaStream_t stream) const;
  void grow(int64_t capacity, int64_t count, cudaStream_t stream);  // keeps entries [0, count)
  void release();

  RemovalSink sink_;
  int64_t capacity_ = 0;
  int64_t bound_ = 0;  // >= the device count once the work queued so far has run
  // The count copied to the host (pinned) when snapshot_done_ completes; snapshot_bound_ is
  // bound_ when the copy was queued, or -1 when none is pending.
  uint64_t* snapshot_ = nullptr;
  cudaEvent_t snapshot_done_ = nullptr;
  int64_t snapshot_bound_ = -1;
};

}  // namespace genrec::cuda
