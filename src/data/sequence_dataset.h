// SequenceDataset: every user's events in time order, column-wise (CSR over users).
// This is what converters and the synthetic generator produce, what shards store, and what
// batchers cut into training windows.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace genrec {

struct SequenceDataset {
  std::vector<int64_t> user_ids;    // [U] raw 64-bit user ids
  std::vector<int64_t> offsets{0};  // [U + 1]; user u owns events offsets[u] .. offsets[u+1]
  std::vector<int64_t> items;       // [E] raw 64-bit item ids
  std::vector<int64_t> timestamps;  // [E] seconds since the epoch (or positions when unknown)
  std::vector<int32_t> actions;     // [E] action type or rating; 0 when unknown
  // Optional extra sparse features per event: one int64 column of E values per name.
  std::vector<std::string> feature_names;
  std::vector<std::vector<int64_t>> features;

  int64_t num_users() const { return static_cast<int64_t>(user_ids.size()); }
  int64_t num_events() const { return static_cast<int64_t>(items.size()); }
  int64_t length(int64_t user) const { return offsets[user + 1] - offsets[user]; }

  // Appends one user's events (columns of equal length, features in feature_names order).
  void add_user(int64_t user_id, const std::vector<int64_t>& user_items,
                const std::vector<int64_t>& user_timestamps,
                const std::vector<int32_t>& user_actions,
                const std::vector<std::vector<int64_t>>& user_features = {});

  // Throws unless every column has E entries and offsets are a valid CSR index.
  void validate() const;
};

// Dense item vocabulary: raw ids ↔ indices 1..size() (0 is reserved for padding).
class ItemVocabulary {
 public:
  ItemVocabulary() = default;
  // All distinct items of the dataset, indexed in ascending raw-id order.
  static ItemVocabulary build(const SequenceDataset& dataset);
  static ItemVocabulary from_raw_ids(std::vector<int64_t> sorted_raw_ids);

  int64_t size() const { return static_cast<int64_t>(raw_ids_.size()); }
  int64_t index_of(int64_t raw_id) const;  // 0 when unknown
  int64_t raw_id(int64_t index) const { return raw_ids_.at(index - 1); }
  const std::vector<int64_t>& raw_ids() const { return raw_ids_; }

 private:
  std::vector<int64_t> raw_ids_;  // sorted
};

}  // namespace genrec
