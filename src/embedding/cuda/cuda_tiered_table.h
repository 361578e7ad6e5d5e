// CudaTieredTable: a CudaDynamicTable in HBM (the hot tier) caching the most used rows of a
// larger host DynamicTable, optionally over a cold tier (the RocksDB DiskTier when built with
// it), for batches of device keys. The tiers are exclusive, as in
// TieredTable (embedding/tiered_table.h): a key's row lives in exactly one tier and moves
// whole (values, optimizer state, score, write stamp). A lookup moves the rows it needs in
// batches, never one row at a time across PCIe: the keys that missed hot are gathered and
// deduplicated on the device and copied to the host in one transfer, looked up and taken out of
// the host table in one batch, their rows uploaded in one transfer and inserted into hot in one
// call; the rows hot evicts for them come back in one transfer and go into the host table in one
// batch. Keys host lacks are taken from the cold tier in one batch, and what a bounded host
// evicts goes down to it in one batch (embedding/lower_tiers.h, as in TieredTable).
// The tiers log no removals (a row moving between them leaves one); the table logs the keys that
// leave it, as TieredTable does: erase(), and the rows a bounded host without a cold tier drops.
// Calls are serialized by one mutex and synchronize `stream` (the host table is on the host).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "core/cuda/caching_allocator.h"
#include "core/cuda/pinned_pool.h"
#include "embedding/cold_tier.h"
#include "embedding/cuda/cuda_dynamic_table.h"
#include "embedding/dynamic_table.h"
#include "embedding/lower_tiers.h"
#include "embedding/removal_log.h"

namespace genrec::cuda {

class CudaTieredTable {
 public:
  // Both tiers need the same dim, optimizer state and eviction policy (not kCustom: a lookup
  // takes no scores). hot: all rows in HBM (max_hbm_row_bytes < 0); host: unbounded
  // (max_capacity 0), or bounded and then over `cold` (rows of the same shape), or bounded
  // alone, dropping what it evicts. New rows take hot's initializer. Both tiers are built
  // without a removal log (as_tier).
  CudaTieredTable(const CudaTableOptions& hot, const TableOptions& host,
                  std::unique_ptr<ColdTier> cold = nullptr);

  // Like CudaDynamicTable::find_or_insert: every occurrence gets its key's row in values_out
  // (n x dim, device), promoted from host or created with the initializer when the key is in
  // no tier; afterwards every stored key of the batch is in hot. stored[i] (optional, device) =
  // 0 when hot could not take the key because its bucket held only keys of the batch: a new
  // key then gets the initializer's row (and is not stored), a host or cold key its row (which
  // goes to host). Every occurrence is one access, as in the hot table.
  void find_or_insert(const uint64_t* keys, int64_t n, float* values_out, uint8_t* stored,
                      cudaStream_t stream);
  // Read-only lookup in hot, host, then cold: found[i] (device) = 1 and the row in values_out when
  // the key is in a tier, else 0 and the row is left untouched. Nothing moves, no score changes, no
  // statistics are counted.
  void find(const uint64_t* keys, int64_t n, float* values_out, uint8_t* found,
            cudaStream_t stream) const;
  // Every row of every tier, sorted by key.
  TableRows export_rows(cudaStream_t stream = nullptr) const;
  // Inserts or overwrites whole rows (distinct keys; values, states, scores and stamps exact)
  // below hot: each key's row leaves hot or cold if it is there, and the rows go into host (what
  // a bounded host evicts, into cold). Without a cold tier the rows must fit host. For restoring
  // dumps (cuda_table_dump.h). Only the rows spilled to cold are counted in the statistics.
  void insert_rows(const TableRows& rows, cudaStream_t stream = nullptr);
  // Removes the (host) keys from every tier, logging those that were in one.
  void erase(const std::vector<uint64_t>& keys, cudaStream_t stream = nullptr);
  // Keys erased at a step after `step`, sorted and distinct; see DynamicTable::removed_since.
  std::vector<uint64_t> removed_since(uint64_t step) const { return removals_.since(step); }
  void forget_removals(uint64_t step) { removals_.forget(step); }

  int64_t size(cudaStream_t stream = nullptr) const;  // every tier; synchronizes
  void set_step(uint64_t step);
  uint64_t step() const { return hot_.step(); }
  void set_epoch(uint64_t epoch);
  // The tiers themselves, e.g. to fill host with rows that are in no tier (insert_rows).
  CudaDynamicTable& hot() { return hot_; }
  DynamicTable& host() { return host_; }
  const CudaDynamicTable& hot() const { return hot_; }
  const DynamicTable& host() const { return host_; }
  const ColdTier* cold() const { return cold_.get(); }  // null without a cold tier
  // As in TieredTable. A repeated key of a batch is a hot hit; a kEmptyKey occurrence is a miss
  // (it is never stored); a host or cold row that hot cannot take (see find_or_insert) is a host
  // or cold hit but neither promoted nor fetched.
  TierStats stats() const;
  void reset_stats();

 private:
  // Staging reused across calls, grown to the largest batch seen.
  struct Scratch {
    DeviceBuffer<uint8_t> flags, up_stored;
    DeviceBuffer<uint64_t> miss, sorted, up_keys, up_scores, up_stamps, ev_keys, ev_scores,
        ev_stamps;
    DeviceBuffer<int64_t> counts, miss_index;
    DeviceBuffer<float> up_values, up_states, ev_rows;
    DeviceBuffer<uint8_t> sort_temp;
    PinnedBuffer h_counts, h_keys, h_values, h_states, h_scores, h_stamps, h_found, h_ev_keys,
        h_ev_rows, h_ev_scores, h_ev_stamps;
  };
  // Gathers the keys whose flag is 0 (not in hot), without kEmptyKey, on the device and copies
  // them to scratch h_keys; with `index`, their batch positions to scratch miss_index. Returns
  // how many; *empties (optional) counts the kEmptyKey occurrences. Synchronizes.
  int64_t gather_misses(const uint64_t* keys, const uint8_t* flags, int64_t n, bool sorted,
                        bool index, int64_t* empties, cudaStream_t stream) const;

  CudaDynamicTable hot_;
  DynamicTable host_;
  std::unique_ptr<ColdTier> cold_;
  RemovalLog removals_;
  mutable std::mutex mutex_;
  mutable Scratch scratch_;
  TableRows demoted_;  // reused: its vectors keep their capacity
  TierStats stats_;
};

}  // namespace genrec::cuda
