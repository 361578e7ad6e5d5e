// TieredTable: a small bounded "hot" DynamicTable over a larger "host" DynamicTable (both on
// the CPU here; the hot tier becomes the GPU table later). The tiers are exclusive: a key's
// row lives in exactly one tier, and moves between them whole (values, optimizer state,
// score, stamp). A lookup batch promotes its host rows into hot in one batch, and the rows
// that hot evicts to make room (never the batch's own keys) are demoted to host. Calls are
// serialized by one mutex. There is no disk tier (RocksDB is optional and not built).
#pragma once

#include <cstdint>
#include <mutex>

#include "embedding/dynamic_table.h"

namespace genrec {

struct TierStats {
  int64_t hot_hits = 0;   // key occurrences found in hot
  int64_t host_hits = 0;  // occurrences whose row was promoted from host
  int64_t misses = 0;     // occurrences in neither tier (new keys)
  int64_t promoted = 0;   // rows moved host -> hot
  int64_t demoted = 0;    // rows moved hot -> host
};

class TieredTable {
 public:
  // hot.max_capacity must be positive; both tiers need the same dim and optimizer state.
  TieredTable(const TableOptions& hot, const TableOptions& host);

  // Like DynamicTable::find_or_insert, after which every stored key of the batch is in hot.
  // The batch's distinct keys must fit in hot (at most hot.max_capacity).
  void find_or_insert(const uint64_t* keys, int64_t n, float* values_out,
                      uint8_t* stored = nullptr);
  // Read-only lookup in hot, then host; nothing moves and no statistics are counted.
  void find(const uint64_t* keys, int64_t n, float* values_out, uint8_t* found) const;
  // All rows of both tiers, sorted by key.
  TableRows export_rows() const;

  void set_step(uint64_t step);
  void set_epoch(uint64_t epoch);
  int64_t size() const { return hot_.size() + host_.size(); }
  DynamicTable& hot() { return hot_; }
  DynamicTable& host() { return host_; }
  const DynamicTable& hot() const { return hot_; }
  const DynamicTable& host() const { return host_; }
  TierStats stats() const;
  void reset_stats();

 private:
  DynamicTable hot_, host_;
  mutable std::mutex mutex_;
  TierStats stats_;
};

}  // namespace genrec
