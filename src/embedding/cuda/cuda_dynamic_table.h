// CudaDynamicTable: the GPU counterpart of DynamicTable (embedding/dynamic_table.h), same
// keys, rows, initializer and eviction scores, for batches of device pointers on a stream.
// Layout and guarantees (docs/EMBEDDING.md has the long form):
// - buckets of 128 slots; a key lives only in its home bucket (hash & mask), so a full bucket
//   evicts even when the table as a whole has free slots. Two keys never share a row.
// - a batch acts like the CPU table's "one key at a time in batch order" where that is
//   observable at the end of the call: find_or_insert inserts a key once and every occurrence
//   sees the same row; insert_or_assign and assign keep the value (and custom score) of the
//   last occurrence; every occurrence counts as one access for LFU.
// - write stamps as on the CPU: a row's stamp is the table step of the call that last wrote its
//   values (find_or_insert's new rows, insert_or_assign, assign; insert_rows writes given ones),
//   so incremental dumps (cuda_table_dump.h) hold the rows written since a step.
// - an inserting batch never evicts a row whose key occurs in the batch; when a bucket has no
//   other row to give up, the new key is not stored (stored[i] = 0 for all its occurrences).
// - calls are serialized in the order they are issued, whatever their streams: each call waits
//   for the previous one's end (an event), so host threads may share a table.
// - admission (options.admission; find_or_insert only, as on the CPU): the occurrences of absent
//   keys are sightings, counted as DynamicTable counts them (CudaCountingFilter::
//   record_until_admitted). A key is admitted in a batch when its estimate after all of the
//   batch's sightings reaches the threshold K, and then all its occurrences of the batch are;
//   the CPU table refuses the first of them and inserts on the K-th sighting. Rows, values and
//   (for keys that share no sketch counter) the filter's counters therefore end as the CPU's;
//   only those early occurrences' stored flags differ (1 here, 0 there) and, with (epoch-)LFU,
//   the new row counts them as accesses.
// - removals (erase, eviction, clear) are logged with the table step in device memory, as
//   DynamicTable logs them (options.log_removals), for incremental dumps' tombstones.
// Batch calls queue work on `stream` and do not synchronize; size(), export_rows(), reserve()
// synchronize, and so, rarely, does a call that may remove rows while the table logs removals
// (when its log may be full, see device_removal_log.h). Keys equal to kEmptyKey are never found
// nor stored.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "embedding/cuda/cuda_counting_filter.h"
#include "embedding/cuda/device_removal_log.h"
#include "embedding/dynamic_table.h"
#include "embedding/eviction.h"

namespace genrec::cuda {

class TableStorage;
enum class BatchOp : uint8_t;  // the inserting and assigning calls, defined in the .cu

struct CudaTableOptions {
  int64_t dim = 0;
  OptimizerState optimizer = OptimizerState::kNone;
  float initial_state = 0.0f;  // initial Adagrad accumulator (Adam state starts at zero)
  Initializer initializer;     // the same rows as the CPU table's for the same key
  int64_t capacity = 1 << 17;  // slots, rounded up to a power-of-two number of 128-slot buckets
  EvictionPolicy eviction = EvictionPolicy::kLru;
  // At most this many bytes of rows live in device memory, the same lowest slots of every
  // bucket (inserts fill them first), the rest in mapped pinned host memory; < 0: all in
  // device memory.
  int64_t max_hbm_row_bytes = -1;
  std::shared_ptr<CudaCountingFilter> admission;  // null: every new key is admitted
  // Log removed keys for incremental dumps' tombstones (removed_since), as
  // TableOptions::log_removals: off for the hot tier of a CudaTieredTable (a row it evicts moves
  // to host), and where nothing dumps incrementally (the log grows until forget_removals).
  bool log_removals = true;

  // These options for a tier of a tiered table (no removal log).
  CudaTableOptions as_tier() const {
    CudaTableOptions tier = *this;
    tier.log_removals = false;
    return tier;
  }
};

// Where an inserting call writes the rows it evicts (device pointers, room for n rows each):
// keys, rows (row_dim() floats: values then state), scores, stamps (optional). The call adds the
// number of rows it wrote to *count (device); the caller zeroes it. Order is unspecified.
struct EvictedRows {
  uint64_t* keys = nullptr;
  float* rows = nullptr;
  uint64_t* scores = nullptr;
  int64_t* count = nullptr;
  uint64_t* stamps = nullptr;
};

class CudaDynamicTable {
 public:
  explicit CudaDynamicTable(const CudaTableOptions& options);
  ~CudaDynamicTable();
  CudaDynamicTable(const CudaDynamicTable&) = delete;
  CudaDynamicTable& operator=(const CudaDynamicTable&) = delete;

  const CudaTableOptions& options() const { return options_; }
  int64_t dim() const { return options_.dim; }
  int64_t state_dim() const { return state_dim_; }
  int64_t row_dim() const { return options_.dim + state_dim_; }
  int64_t capacity() const;                           // slots
  int64_t host_slots() const;                         // slots whose rows live in host memory
  int64_t size(cudaStream_t stream = nullptr) const;  // synchronizes

  // The clock of scores and stamps, as DynamicTable::set_step / set_epoch: read when a call is
  // issued.
  void set_step(uint64_t step) { step_.store(step); }
  uint64_t step() const { return step_.load(); }
  void set_epoch(uint64_t epoch) { epoch_.store(epoch); }
  uint64_t epoch() const { return epoch_.load(); }

  // found[i] = 1 and values_out row i (dim floats) = the row when present; else found[i] = 0
  // and the row is left untouched. Optional: states_out (n x state_dim), scores_out,
  // stamps_out. Scores are not changed. values_out may be null (contains).
  void find(const uint64_t* keys, int64_t n, float* values_out, uint8_t* found, cudaStream_t stream,
            float* states_out = nullptr, uint64_t* scores_out = nullptr,
            uint64_t* stamps_out = nullptr) const;
  void contains(const uint64_t* keys, int64_t n, uint8_t* out, cudaStream_t stream) const;

  // Finds each key, inserting absent ones with the initializer (state set to its initial
  // value), and copies the rows to values_out. stored[i] = 0 when the key was not stored
  // (kEmptyKey, refused by admission, or its bucket held only keys of this batch); values_out
  // then holds the initializer's row. scores: per-key scores, required by kCustom and refused
  // otherwise.
  void find_or_insert(const uint64_t* keys, int64_t n, float* values_out, uint8_t* stored,
                      cudaStream_t stream, const uint64_t* scores = nullptr,
                      const EvictedRows* evicted = nullptr);
  // Inserts or overwrites the values (dim floats per key); new rows get the initial state. Not
  // subject to admission, as on the CPU (the values come from the caller).
  void insert_or_assign(const uint64_t* keys, const float* values, int64_t n, cudaStream_t stream,
                        uint8_t* stored = nullptr, const uint64_t* scores = nullptr,
                        const EvictedRows* evicted = nullptr);
  // Overwrites present keys only; found[i] (optional) says which were present.
  void assign(const uint64_t* keys, const float* values, int64_t n, cudaStream_t stream,
              uint8_t* found = nullptr, const uint64_t* scores = nullptr);
  // Inserts or overwrites whole rows exactly, as DynamicTable::insert_rows does for the tiers:
  // keys[i] gets values row i (dim floats), states row i (state_dim floats; null without state),
  // scores[i] and stamps[i], with no policy update and no admission. Without stamps the rows are
  // stamped with the current step (they are written now: an optimizer step writing rows back
  // stamps them as DynamicTable::update_rows does). Keys must be distinct. Neither the call's
  // keys nor the `pinned` ones (device, num_pinned) are evicted by it; rows evicted to make room
  // go to `evicted`. stored[i] (optional) = 0 when the key's bucket held only such keys (or the
  // key is kEmptyKey).
  void insert_rows(const uint64_t* keys, const float* values, const float* states,
                   const uint64_t* scores, int64_t n, cudaStream_t stream,
                   uint8_t* stored = nullptr, const EvictedRows* evicted = nullptr,
                   const uint64_t* pinned = nullptr, int64_t num_pinned = 0,
                   const uint64_t* stamps = nullptr);
  // The same for host rows (distinct keys; stamps included), uploaded in chunks that all count
  // as one call, so no row of it evicts another; rows evicted to make room are dropped. Returns
  // how many rows were stored. Synchronizes.
  int64_t insert_rows(const TableRows& rows, cudaStream_t stream = nullptr);
  // Removes present keys; erased[i] (optional) = 1 for the occurrence that removed a row.
  void erase(const uint64_t* keys, int64_t n, cudaStream_t stream, uint8_t* erased = nullptr);
  // The same for host keys, uploaded in one copy. Synchronizes.
  void erase(const std::vector<uint64_t>& keys, cudaStream_t stream = nullptr);

  // Scans slots [offset, offset + num_slots) and appends the rows with score >= min_score and
  // stamp >= min_stamp: keys, values (dim), states (state_dim, optional), scores (optional),
  // stamps (optional), in unspecified order, at *count (device, caller-zeroed), which the call
  // advances. Outputs need room for num_slots rows.
  void export_batch(int64_t offset, int64_t num_slots, uint64_t* keys_out, float* values_out,
                    int64_t* count, cudaStream_t stream, float* states_out = nullptr,
                    uint64_t* scores_out = nullptr, uint64_t min_score = 0,
                    uint64_t* stamps_out = nullptr, uint64_t min_stamp = 0) const;
  // All rows with score >= min_score and stamp >= min_stamp on the host, sorted by key (an
  // incremental dump since stamp s takes min_stamp s + 1). Synchronizes.
  TableRows export_rows(uint64_t min_score = 0, cudaStream_t stream = nullptr,
                        uint64_t min_stamp = 0) const;

  // Grows to at least `capacity` slots (never shrinks), keeping every row; synchronizes. The
  // HBM budget stays max_hbm_row_bytes: with one, the added rows live in host memory.
  void reserve(int64_t capacity, cudaStream_t stream = nullptr);
  void clear(cudaStream_t stream = nullptr);  // with a log: synchronizes, logs every key

  // As DynamicTable::removed_since: the keys removed (erase, eviction, clear) at a step after
  // `step`, sorted and distinct, whether or not they are back; empty without a log.
  // Synchronizes.
  std::vector<uint64_t> removed_since(uint64_t step, cudaStream_t stream = nullptr) const;
  // Drops the removals at or before `step` (DynamicTable::forget_removals). Synchronizes.
  void forget_removals(uint64_t step, cudaStream_t stream = nullptr);

 private:
  void run_batch(BatchOp op, const uint64_t* keys, int64_t n, const float* values_in,
                 float* values_out, uint8_t* flags, const uint64_t* scores,
                 const EvictedRows* evicted, cudaStream_t stream);
  // Makes `stream` wait for the previous call; returns the lock that serializes issuing.
  std::unique_lock<std::mutex> begin(cudaStream_t stream) const;
  void end(cudaStream_t stream) const;  // the next call waits for this point of `stream`
  void check_batch(const uint64_t* keys, int64_t n, const uint64_t* scores, const char* op) const;
  // The id of a new marking batch (marks are cleared when the ids wrap); called between begin
  // and end.
  uint32_t next_batch(cudaStream_t stream);
  // Room in the removal log for n more removals by the kernels queued next on `stream` (between
  // begin and end); the sink they append to, a null one without a log.
  RemovalSink log_room(int64_t n, cudaStream_t stream);
  void launch_insert_rows(const uint64_t* keys, const float* values, const float* states,
                          const uint64_t* scores, const uint64_t* stamps, int64_t n,
                          uint8_t* stored, const EvictedRows* evicted, const uint64_t* pinned,
                          int64_t num_pinned, uint32_t batch, const RemovalSink& removals,
                          cudaStream_t stream);
  void launch_export(int64_t offset, int64_t num_slots, uint64_t* keys_out, float* values_out,
                     int64_t* count, cudaStream_t stream, float* states_out, uint64_t* scores_out,
                     uint64_t min_score, uint64_t* stamps_out, uint64_t min_stamp) const;

  CudaTableOptions options_;
  int64_t state_dim_ = 0;
  std::unique_ptr<TableStorage> storage_;
  std::unique_ptr<DeviceRemovalLog> removals_;  // null: options.log_removals is off
  mutable std::mutex mutex_;
  cudaEvent_t last_ = nullptr;
  uint32_t batch_ = 0;          // id of the last marking batch (see marks in the .cu)
  unsigned insert_blocks_ = 1;  // blocks of the insert kernel resident on the device at once
  std::atomic<uint64_t> step_{0}, epoch_{0};
};

}  // namespace genrec::cuda
