// TieredTable: a small bounded "hot" DynamicTable over a larger "host" DynamicTable (both on
// the CPU here; the hot tier becomes the GPU table later), optionally over a cold tier (the
// RocksDB DiskTier when built with it). The tiers are exclusive: a key's row lives in exactly
// one tier, and moves between them whole (values, optimizer state, score, stamp). A lookup
// batch promotes its host and cold rows into hot in one batch per tier, the rows that hot
// evicts to make room (never the batch's own keys) are demoted to host, and the rows a bounded
// host evicts are spilled to the cold tier in one batch. Calls are serialized by one mutex.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>

#include "embedding/cold_tier.h"
#include "embedding/dynamic_table.h"
#include "embedding/lower_tiers.h"

namespace genrec {

class TieredTable {
 public:
  // hot.max_capacity must be positive; both tiers need the same dim and optimizer state. A
  // cold tier needs a bounded host (host.max_capacity > 0) and rows of the same shape.
  TieredTable(const TableOptions& hot, const TableOptions& host,
              std::unique_ptr<ColdTier> cold = nullptr);

  // Like DynamicTable::find_or_insert, after which every stored key of the batch is in hot.
  // The batch's distinct keys must fit in hot (at most hot.max_capacity).
  void find_or_insert(const uint64_t* keys, int64_t n, float* values_out,
                      uint8_t* stored = nullptr);
  // Read-only lookup in hot, host, then cold; nothing moves and no statistics are counted.
  void find(const uint64_t* keys, int64_t n, float* values_out, uint8_t* found) const;
  // Inserts or overwrites whole rows (distinct keys; values, states, scores and stamps exact)
  // below hot: into host, and what host evicts or cannot take into the cold tier. Without a
  // cold tier the rows must fit the host tier. For restoring dumps (embedding/table_dump.h).
  void insert_rows(const TableRows& rows);
  // All rows of every tier, sorted by key.
  TableRows export_rows() const;
  // Removes the keys from every tier; returns how many were present.
  int64_t erase(const uint64_t* keys, int64_t n);
  // Keys that left every tier (erase, or evicted by a bounded host without a cold tier) at a
  // step after `step`, sorted and distinct; see DynamicTable::removed_since.
  std::vector<uint64_t> removed_since(uint64_t step) const { return removals_.since(step); }
  void forget_removals(uint64_t step) { removals_.forget(step); }

  void set_step(uint64_t step);
  void set_epoch(uint64_t epoch);
  int64_t size() const { return hot_.size() + host_.size() + (cold_ ? cold_->size() : 0); }
  DynamicTable& hot() { return hot_; }
  DynamicTable& host() { return host_; }
  const DynamicTable& hot() const { return hot_; }
  const DynamicTable& host() const { return host_; }
  const ColdTier* cold() const { return cold_.get(); }  // null without a cold tier
  TierStats stats() const;
  void reset_stats();

 private:
  void demote(const TableRows& evicted);

  DynamicTable hot_, host_;
  std::unique_ptr<ColdTier> cold_;
  RemovalLog removals_;
  mutable std::mutex mutex_;
  TierStats stats_;
};

}  // namespace genrec
