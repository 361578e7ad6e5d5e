// DiskTier: a ColdTier in a RocksDB database; built only when CMake finds RocksDB, which then
// defines GENREC_WITH_ROCKSDB. One record per row: the key big-endian (so RocksDB's byte order
// is key order) and the row's score, stamp, values and optimizer state (docs/FORMATS.md).
// A scratch store: its rows are the overflow of in-memory tiers that a crash loses anyway, so
// on its own it is no consistent table; a table is recovered from a checkpoint of its rows
// (TieredTable::export_rows covers every tier). So writes skip the write-ahead log, and the
// database is wiped when opened and deleted when closed.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "embedding/cold_tier.h"

namespace rocksdb {
class DB;
}

namespace genrec {

class DiskTier : public ColdTier {
 public:
  // Opens an empty database in directory `path`, which belongs to the tier: RocksDB files left
  // there (by a crashed run) are deleted first. Errors name the path and RocksDB's status.
  DiskTier(const std::string& path, int64_t dim, int64_t state_dim);
  ~DiskTier() override;  // closes and deletes the database
  DiskTier(const DiskTier&) = delete;
  DiskTier& operator=(const DiskTier&) = delete;

  // put is one WriteBatch; take is one MultiGet and one WriteBatch of deletes.
  void put(const TableRows& rows) override;
  TableRows take(const uint64_t* keys, int64_t n) override;
  void find(const uint64_t* keys, int64_t n, float* values_out, uint8_t* found) const override;
  TableRows export_rows() const override;
  int64_t size() const override { return size_; }
  const std::string& path() const { return path_; }

 private:
  struct Records;
  Records read(const uint64_t* keys, int64_t n) const;

  std::string path_;
  int64_t dim_ = 0, state_dim_ = 0;
  int64_t size_ = 0;  // exact: put only adds absent keys, take only deletes present ones
  std::unique_ptr<rocksdb::DB> db_;
};

}  // namespace genrec
