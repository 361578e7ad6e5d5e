#include "core/cuda/cuda_check.h"  // first: it configures fmt for nvcc

#include "embedding/cuda/table_storage.h"

#include <algorithm>
#include <cstddef>

#include "embedding/cuda/device_alloc.h"

namespace genrec::cuda {

TableStorage::TableStorage(int64_t num_buckets, int64_t stride, int64_t hbm_row_bytes)
    : num_buckets_(num_buckets) {
  GENREC_CHECK(num_buckets > 0 && (num_buckets & (num_buckets - 1)) == 0,
               "CUDA dynamic table: bucket count {} must be a positive power of two", num_buckets);
  const int64_t n = slots();
  view_.stride = stride;
  view_.bucket_mask = static_cast<uint64_t>(num_buckets - 1);
  const int64_t row_bytes = stride * static_cast<int64_t>(sizeof(float));
  view_.hbm_per_bucket =
      hbm_row_bytes < 0 ? kBucketSlots
                        : std::min<int64_t>(kBucketSlots, hbm_row_bytes / row_bytes / num_buckets);
  try {
    device_alloc(&view_.digests, n, "digests");
    device_alloc(&view_.slots, n, "slots");
    device_alloc(&view_.locks, num_buckets, "bucket locks");
    device_alloc(&view_.size, 1, "the size counter");
    device_alloc(&view_.rewrites, 2, "the rewrite counters");
    if (view_.hbm_per_bucket > 0) {
      device_alloc(&view_.hbm_rows, num_buckets * view_.hbm_per_bucket * stride, "rows");
    }
    if (host_slots() > 0) {
      const size_t bytes = sizeof(float) * host_slots() * stride;
      const cudaError_t err = cudaHostAlloc(reinterpret_cast<void**>(&host_alloc_), bytes,
                                            cudaHostAllocMapped | cudaHostAllocPortable);
      if (err != cudaSuccess) {
        cudaGetLastError();
        host_alloc_ = nullptr;
        fail("CUDA dynamic table: cannot allocate {} bytes of mapped host memory: {}", bytes,
             cudaGetErrorString(err));
      }
      GENREC_CUDA_CHECK(
          cudaHostGetDevicePointer(reinterpret_cast<void**>(&view_.host_rows), host_alloc_, 0));
    }
    GENREC_CUDA_CHECK(cudaMemset(view_.slots, 0, sizeof(Slot) * n));  // scores, stamps, marks
    GENREC_CUDA_CHECK(cudaMemset(view_.locks, 0, sizeof(uint32_t) * num_buckets));
    GENREC_CUDA_CHECK(cudaMemset(view_.rewrites, 0, sizeof(unsigned long long) * 2));
    clear(nullptr);
    GENREC_CUDA_CHECK(cudaDeviceSynchronize());
  } catch (...) {
    release();
    throw;
  }
}

TableStorage::~TableStorage() {
  release();
}

void TableStorage::release() {
  // Frees are best effort: a destructor must not throw, and a failed free leaves nothing to do.
  cudaFree(view_.digests);
  cudaFree(view_.slots);
  cudaFree(view_.locks);
  cudaFree(view_.size);
  cudaFree(view_.rewrites);
  cudaFree(view_.hbm_rows);
  if (host_alloc_ != nullptr) cudaFreeHost(host_alloc_);
  host_alloc_ = nullptr;
  view_ = TableView{};
}

// Sets every byte of one word of every slot (the word at `offset` in Slot) to `value`: a 2D
// memset whose rows are the slots.
void TableStorage::fill_word(size_t offset, int value, cudaStream_t stream) {
  GENREC_CUDA_CHECK(cudaMemset2DAsync(reinterpret_cast<char*>(view_.slots) + offset, sizeof(Slot),
                                      value, sizeof(uint64_t), static_cast<size_t>(slots()),
                                      stream));
}

void TableStorage::clear(cudaStream_t stream) {
  fill_word(offsetof(Slot, key), 0xFF, stream);  // kEmptyKey
  GENREC_CUDA_CHECK(cudaMemsetAsync(view_.digests, 0, slots(), stream));
  GENREC_CUDA_CHECK(cudaMemsetAsync(view_.size, 0, sizeof(unsigned long long), stream));
}

void TableStorage::clear_marks(cudaStream_t stream) {
  fill_word(offsetof(Slot, mark), 0, stream);
}

}  // namespace genrec::cuda
