// The keys a table removed (erased, evicted, cleared) and the table step at which it did, so that
// an incremental dump can carry tombstones: a table restored from a full dump and the
// incremental dumps after it then lacks the keys the live table dropped since, instead of
// keeping them from the older dump. 16 bytes a removal until forget() drops it.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

namespace genrec {

// The filters of a log held as parallel arrays (also the CUDA table's, once downloaded):
// the keys of the entries after `step`, sorted and distinct; and the entries after `step` kept
// in place, in order (the arrays shrink to them).
std::vector<uint64_t> keys_removed_after(const std::vector<uint64_t>& keys,
                                         const std::vector<uint64_t>& steps, uint64_t step);
void keep_removals_after(std::vector<uint64_t>& keys, std::vector<uint64_t>& steps, uint64_t step);

class RemovalLog {
 public:
  void append(uint64_t key, uint64_t step);
  void append(const uint64_t* keys, int64_t n, uint64_t step);
  // The keys removed at a step after `step`, sorted and distinct (some may be back since).
  std::vector<uint64_t> since(uint64_t step) const;
  // Drops the removals at or before `step`: dumps since an earlier step lose their tombstones.
  void forget(uint64_t step);

 private:
  mutable std::mutex mutex_;
  std::vector<uint64_t> keys_, steps_;
};

}  // namespace genrec
