// Rows of events in file order, as converters read them, and their grouping into a
// SequenceDataset (users ascending by raw id, each user's events ascending by timestamp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/sequence_dataset.h"

namespace genrec {

struct EventTable {
  std::vector<int64_t> users, items, timestamps;
  std::vector<int32_t> actions;
  std::vector<std::string> feature_names;
  std::vector<std::vector<int64_t>> features;  // one column per name, one value per row

  int64_t size() const { return static_cast<int64_t>(users.size()); }
  // Adds a feature column holding 0 (missing) for the rows so far; returns its index.
  size_t add_feature(const std::string& name);

  // How events of one user with equal timestamps are ordered.
  enum class Ties { kFileOrder, kItemId };
  // Groups rows by user (ascending raw id) and sorts each user's events by timestamp, then by
  // `ties`, then by file order. Consumes the table.
  SequenceDataset to_dataset(Ties ties);
};

}  // namespace genrec
