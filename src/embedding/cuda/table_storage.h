// Device memory of the CUDA dynamic table: buckets of 128 slots, each slot a one-byte digest and
// a 32-byte Slot (key, eviction score, write stamp, batch mark), plus one lock word per bucket; the
// rows (values then optimizer state, fp32) live in separate row-major arrays indexed by slot. With
// a byte budget for device rows, the first hbm_per_bucket slots of every bucket have their rows in
// device memory and the others in mapped pinned host memory that the kernels read and write
// through the mapping. New keys take device slots: when a bucket's are full, its lowest-scored
// device row outside the batch moves to a host slot (the only time a row moves while its key
// stays), so device memory holds the rows most recently inserted or used and host memory the
// coldest (at load 0.75 with half the rows in host memory: 1/3 of the keys, where splitting the
// slots by bucket would put half of them there). Host rows are slot-major: host slot k of every
// bucket lies in one run (row k * buckets + b), so the rows a call moves, which all aim at the
// host slot index of the table's fill level, lie close together, and the rows in use fill the
// front of the host memory, where a batch's host rows lie about twice as close together as in
// bucket-major order (fewer address translations per copied row).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace genrec::cuda {

constexpr int kBucketSlots = 128;

// A slot's words share one 32-byte sector: the probe that reads the key brings the score, stamp
// and mark into L2 with it, so a call that then writes them touches one sector per key, where
// four arrays cost four (each read and written back whole).
struct alignas(32) Slot {
  uint64_t key;    // kEmptyKey marks a free slot
  uint64_t score;  // eviction score
  uint64_t stamp;  // table step of the row's last write
  uint64_t mark;   // batch << 32 | (last occurrence + 1), see the .cu
};

// What the kernels see of a TableStorage (plain pointers, passed by value).
struct TableView {
  uint8_t* digests = nullptr;  // slots; 0 marks a free slot
  Slot* slots = nullptr;
  uint32_t* locks = nullptr;           // buckets
  unsigned long long* size = nullptr;  // occupied slots
  // 2 words: rows queued for a rewrite by the current call, blocks of its rewrite kernel done
  // (both 0 between calls, see the .cu)
  unsigned long long* rewrites = nullptr;
  float* hbm_rows = nullptr;   // buckets x hbm_per_bucket rows
  float* host_rows = nullptr;  // buckets x (kBucketSlots - hbm_per_bucket) rows, device-mapped
  int64_t hbm_per_bucket = kBucketSlots;
  int64_t stride = 0;  // floats per row: dim + state_dim rounded up to 4 (16-byte rows)
  uint64_t bucket_mask = 0;

  // Whether a bucket's rows are split between device and host memory (rows are moved between
  // them only then).
  __host__ __device__ bool splits_rows() const {
    return hbm_per_bucket > 0 && hbm_per_bucket < kBucketSlots;
  }
};

// Where lookups of a table with host rows note the host-row copies they leave to
// copy_host_rows (host_row_copies.h): for occurrence i, rows[i] = the host row to copy, or
// kNoHostRow, and occurrences[i] = i. Inserts note rows they leave to the copies with a flag
// added: kNewHostRow, a new key's host row (the insert kernel of a table without device rows);
// kDemotedHostRow, the host row a device row moved to (the evict kernel, which staged the row).
constexpr uint64_t kNoHostRow = ~0ull;
constexpr uint64_t kNewHostRow = 1ull << 63;
constexpr uint64_t kDemotedHostRow = 1ull << 62;
struct HostRowQueue {
  uint64_t* rows = nullptr;
  uint32_t* occurrences = nullptr;
};

// Owns the arrays of one table layout; every allocation is checked, and a failed constructor
// frees what it had allocated (so running out of memory can be caught and survived).
class TableStorage {
 public:
  // hbm_row_bytes < 0: all rows in device memory; else at most that many bytes of rows there
  // (the same number of slots from every bucket) and the rest in host memory.
  TableStorage(int64_t num_buckets, int64_t stride, int64_t hbm_row_bytes);
  ~TableStorage();
  TableStorage(const TableStorage&) = delete;
  TableStorage& operator=(const TableStorage&) = delete;

  const TableView& view() const { return view_; }
  int64_t num_buckets() const { return num_buckets_; }
  int64_t slots() const { return num_buckets_ * kBucketSlots; }
  int64_t host_slots() const { return num_buckets_ * (kBucketSlots - view_.hbm_per_bucket); }
  // Frees every slot (keys to kEmptyKey, digests to 0, size 0), queued on `stream`.
  void clear(cudaStream_t stream);
  void clear_marks(cudaStream_t stream);

 private:
  void release();
  void fill_word(size_t offset, int value, cudaStream_t stream);

  int64_t num_buckets_ = 0;
  TableView view_;
  float* host_alloc_ = nullptr;  // the host address of view_.host_rows
};

}  // namespace genrec::cuda
