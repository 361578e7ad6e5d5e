// ColdTier: the storage below TieredTable's host tier. The host spills the rows it evicts into
// it and lookups take them back; a key stored here is in no other tier. An interface so that
// TieredTable builds without the optional RocksDB implementation (disk_tier.h).
#pragma once

#include <cstdint>

#include "embedding/dynamic_table.h"

namespace genrec {

class ColdTier {
 public:
  virtual ~ColdTier() = default;
  // Stores whole rows (values, states, scores, stamps) whose keys it does not hold yet.
  virtual void put(const TableRows& rows) = 0;
  // Removes and returns the rows of the present keys among `keys` (distinct), in their order.
  virtual TableRows take(const uint64_t* keys, int64_t n) = 0;
  // Copies the values of present keys (n x dim) and sets found[i]; changes nothing.
  virtual void find(const uint64_t* keys, int64_t n, float* values_out, uint8_t* found) const = 0;
  virtual TableRows export_rows() const = 0;  // sorted by key
  virtual int64_t size() const = 0;
};

}  // namespace genrec
