// CudaTieredTable: a CudaDynamicTable in HBM (the hot tier) caching the most used rows of a
// larger host DynamicTable, for batches of device keys. The tiers are exclusive, as in
// TieredTable (embedding/tiered_table.h): a key's row lives in exactly one tier and moves
// whole (values, optimizer state, score). A lookup moves the rows it needs in batches, never
// one row at a time across PCIe: the keys that missed hot are gathered and deduplicated on the
// device and copied to the host in one transfer, taken out of the host table in one pass per
// chunk, their rows uploaded per chunk (while the host takes the next) and inserted into hot in
// one call; the rows hot evicts for them come back in chunks, each going into the host table
// while the next copies. Calls are serialized by one mutex and synchronize `stream` (the host
// table is on the host). times() says where the time goes.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>
#include <vector>

#include "core/cuda/caching_allocator.h"
#include "core/cuda/pinned_pool.h"
#include "core/cuda/stream.h"
#include "embedding/cuda/cuda_dynamic_table.h"
#include "embedding/dynamic_table.h"
#include "embedding/tiered_table.h"

namespace genrec::cuda {

// Seconds per phase, summed over the calls since reset_stats (docs/EMBEDDING.md, "GPU tiers").
// Device phases are CUDA event intervals on the call's stream, i.e. the GPU's own time for that
// work (a chunked copy: the sum of its chunks); host phases are wall clock. The host works while
// copies run, so the phases overlap and need not add up to `total`.
struct TierPhaseTimes {
  int64_t calls = 0;
  double total = 0;          // wall clock of the whole calls
  double device_lookup = 0;  // hot.contains (find: hot.find), gather, sort, dedup of the misses
  double key_copy = 0;       // the missed keys device -> host
  double host_lookup = 0;    // host.take_rows (find: host.find)
  double upload = 0;         // the rows found in host, host -> device
  double hot_update = 0;     // compaction, hot.insert_rows, hot.find_or_insert (find: scatter)
  double evicted_copy = 0;   // rows evicted from hot, device -> host
  double host_insert = 0;    // demoted rows (and host rows hot could not take) into host
};

struct TierTimes {
  TierPhaseTimes find_or_insert, find;
};

class CudaTieredTable {
 public:
  // Both tiers need the same dim, optimizer state and eviction policy (not kCustom: a lookup
  // takes no scores). hot: all rows in HBM (max_hbm_row_bytes < 0); host: unbounded
  // (max_capacity 0), so that no row is ever dropped. New rows take hot's initializer.
  CudaTieredTable(const CudaTableOptions& hot, const TableOptions& host);

  // Like CudaDynamicTable::find_or_insert: every occurrence gets its key's row in values_out
  // (n x dim, device), promoted from host or created with the initializer when the key is in
  // no tier; afterwards every stored key of the batch is in hot. stored[i] (optional, device) =
  // 0 when hot could not take the key because its bucket held only keys of the batch: a new
  // key then gets the initializer's row (and is not stored), a host key its host row (and stays
  // in host). Every occurrence is one access, as in the hot table.
  void find_or_insert(const uint64_t* keys, int64_t n, float* values_out, uint8_t* stored,
                      cudaStream_t stream);
  // Read-only lookup in hot, then host: found[i] (device) = 1 and the row in values_out when the
  // key is in a tier, else 0 and the row is left untouched. Nothing moves, no score changes,
  // no statistics are counted (only its phase times, in times().find).
  void find(const uint64_t* keys, int64_t n, float* values_out, uint8_t* found,
            cudaStream_t stream) const;
  // Every row of both tiers, sorted by key. Stamps: those of host rows that never left host,
  // zero for rows that went through hot (the CUDA table keeps none).
  TableRows export_rows(cudaStream_t stream = nullptr) const;

  int64_t size(cudaStream_t stream = nullptr) const;  // both tiers; synchronizes
  void set_step(uint64_t step);
  void set_epoch(uint64_t epoch);
  // The tiers themselves, e.g. to fill host with rows that are in no tier (insert_rows).
  CudaDynamicTable& hot() { return hot_; }
  DynamicTable& host() { return host_; }
  const CudaDynamicTable& hot() const { return hot_; }
  const DynamicTable& host() const { return host_; }
  // hot_hits, host_hits, misses, promoted, demoted as in TieredTable (no cold tier). A repeated
  // key of a batch is a hot hit; a kEmptyKey occurrence is a miss (it is never stored); a host
  // row that hot cannot take (see find_or_insert) is a host hit but not a promotion.
  TierStats stats() const;
  TierTimes times() const;
  void reset_stats();  // and times

 private:
  // Staging reused across calls, grown to the largest batch seen.
  struct Scratch {
    DeviceBuffer<uint8_t> flags, up_stored;
    DeviceBuffer<uint64_t> miss, sorted, raw_scores, up_keys, up_scores, ev_keys, ev_scores;
    DeviceBuffer<int64_t> counts, miss_index, src;
    DeviceBuffer<float> raw_values, raw_states, up_values, up_states, ev_rows;
    DeviceBuffer<uint8_t> sort_temp;
    PinnedBuffer h_counts, h_keys, h_values, h_states, h_scores, h_stamps, h_found, h_src, h_stored,
        h_ev_keys, h_ev_rows, h_ev_scores;
    std::vector<Event> events;  // timing events, see the .cu
  };
  // Gathers the keys whose flag is 0 (not in hot), without kEmptyKey, on the device and copies
  // them to scratch h_keys: with `unique` sorted and distinct (left in scratch miss), else with
  // their batch positions in scratch miss_index. Returns how many; *empties (optional) counts
  // the kEmptyKey occurrences. Synchronizes; times the key copy.
  int64_t gather_misses(const uint64_t* keys, const uint8_t* flags, int64_t n, bool unique,
                        int64_t* empties, TierPhaseTimes& times, cudaStream_t stream) const;

  Event& event(int index) const { return scratch_.events[index]; }
  double elapsed(int from, int to) const;  // seconds between two completed events

  CudaDynamicTable hot_;
  DynamicTable host_;
  mutable std::mutex mutex_;
  mutable Scratch scratch_;
  TierStats stats_;
  mutable TierTimes times_;
};

}  // namespace genrec::cuda
