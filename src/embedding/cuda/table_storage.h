// Device memory of the CUDA dynamic table: buckets of 128 slots, each slot a one-byte digest, a
// uint64 key, a uint64 eviction score and a uint64 batch mark, plus one lock word per bucket;
// the rows (values then optimizer state, fp32) live in a separate row-major array indexed by
// slot, so a row never moves while its key stays. Rows past a byte budget live in mapped
// pinned host memory that the kernels read and write through the mapping.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace genrec::cuda {

constexpr int kBucketSlots = 128;

// What the kernels see of a TableStorage (plain pointers, passed by value).
struct TableView {
  uint8_t* digests = nullptr;          // slots; 0 marks a free slot
  uint64_t* keys = nullptr;            // slots; kEmptyKey marks a free slot
  uint64_t* scores = nullptr;          // slots
  uint64_t* marks = nullptr;           // slots: batch << 32 | (last occurrence + 1), see the .cu
  uint32_t* locks = nullptr;           // buckets
  unsigned long long* size = nullptr;  // occupied slots
  // 2 words: rows queued for a rewrite by the current call, blocks of its rewrite kernel done
  // (both 0 between calls, see the .cu)
  unsigned long long* rewrites = nullptr;
  float* hbm_rows = nullptr;   // rows of slots [0, hbm_slots)
  float* host_rows = nullptr;  // rows of slots [hbm_slots, slots), device-mapped
  int64_t hbm_slots = 0;
  int64_t stride = 0;  // floats per row: dim + state_dim rounded up to 4 (16-byte rows)
  uint64_t bucket_mask = 0;
};

// Owns the arrays of one table layout; every allocation is checked, and a failed constructor
// frees what it had allocated (so running out of memory can be caught and survived).
class TableStorage {
 public:
  // hbm_row_bytes < 0: all rows in device memory; else at most that many bytes of rows there
  // and the rest in host memory.
  TableStorage(int64_t num_buckets, int64_t stride, int64_t hbm_row_bytes);
  ~TableStorage();
  TableStorage(const TableStorage&) = delete;
  TableStorage& operator=(const TableStorage&) = delete;

  const TableView& view() const { return view_; }
  int64_t num_buckets() const { return num_buckets_; }
  int64_t slots() const { return num_buckets_ * kBucketSlots; }
  int64_t host_slots() const { return slots() - view_.hbm_slots; }
  // Frees every slot (keys to kEmptyKey, digests to 0, size 0), queued on `stream`.
  void clear(cudaStream_t stream);
  void clear_marks(cudaStream_t stream);

 private:
  void release();

  int64_t num_buckets_ = 0;
  TableView view_;
  float* host_alloc_ = nullptr;  // the host address of view_.host_rows
};

}  // namespace genrec::cuda
