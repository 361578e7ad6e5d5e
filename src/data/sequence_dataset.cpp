// SequenceDataset is plain columns plus a CSR offsets vector; add_user appends and validate()
// checks the structural invariants (column lengths, CSR offsets) that indexing relies on, so a
// dataset from any source (a converter, a shard, a hand-built test) can be checked once and then
// indexed without bounds checks. Time order is the producers' promise and is not re-checked.
// ItemVocabulary keeps only the sorted raw ids and finds an index by binary search.
#include "data/sequence_dataset.h"

#include <algorithm>

#include "core/error.h"

namespace genrec {

void SequenceDataset::add_user(int64_t user_id, const std::vector<int64_t>& user_items,
                               const std::vector<int64_t>& user_timestamps,
                               const std::vector<int32_t>& user_actions,
                               const std::vector<std::vector<int64_t>>& user_features) {
  const size_t n = user_items.size();
  GENREC_CHECK(user_timestamps.size() == n && user_actions.size() == n,
               "add_user {}: column lengths differ (items {}, timestamps {}, actions {})", user_id,
               n, user_timestamps.size(), user_actions.size());
  GENREC_CHECK(user_features.size() == feature_names.size(),
               "add_user {}: {} feature columns given, the dataset has {} feature names", user_id,
               user_features.size(), feature_names.size());
  for (size_t f = 0; f < user_features.size(); ++f) {
    GENREC_CHECK(user_features[f].size() == n,
                 "add_user {}: feature '{}' has {} values for {} events", user_id, feature_names[f],
                 user_features[f].size(), n);
  }
  GENREC_CHECK(!offsets.empty() && offsets.back() == num_events(),
               "add_user {}: dataset offsets are inconsistent (last offset {}, {} events)", user_id,
               offsets.empty() ? -1 : offsets.back(), num_events());
  if (features.size() < feature_names.size()) features.resize(feature_names.size());

  user_ids.push_back(user_id);
  items.insert(items.end(), user_items.begin(), user_items.end());
  timestamps.insert(timestamps.end(), user_timestamps.begin(), user_timestamps.end());
  actions.insert(actions.end(), user_actions.begin(), user_actions.end());
  for (size_t f = 0; f < user_features.size(); ++f) {
    features[f].insert(features[f].end(), user_features[f].begin(), user_features[f].end());
  }
  offsets.push_back(num_events());
}

void SequenceDataset::validate() const {
  const int64_t num_u = num_users(), num_e = num_events();
  GENREC_CHECK(static_cast<int64_t>(offsets.size()) == num_u + 1,
               "dataset: {} offsets for {} users (expected {})", offsets.size(), num_u, num_u + 1);
  GENREC_CHECK(offsets[0] == 0, "dataset: offsets[0] is {}, not 0", offsets[0]);
  for (int64_t u = 0; u < num_u; ++u) {
    GENREC_CHECK(offsets[u + 1] >= offsets[u], "dataset: offsets decrease at user {} ({} > {})", u,
                 offsets[u], offsets[u + 1]);
  }
  GENREC_CHECK(offsets[num_u] == num_e, "dataset: last offset is {}, but there are {} items",
               offsets[num_u], num_e);
  GENREC_CHECK(static_cast<int64_t>(timestamps.size()) == num_e,
               "dataset: {} timestamps for {} events", timestamps.size(), num_e);
  GENREC_CHECK(static_cast<int64_t>(actions.size()) == num_e, "dataset: {} actions for {} events",
               actions.size(), num_e);
  GENREC_CHECK(features.size() == feature_names.size(),
               "dataset: {} feature columns for {} feature names", features.size(),
               feature_names.size());
  for (size_t f = 0; f < feature_names.size(); ++f) {
    GENREC_CHECK(static_cast<int64_t>(features[f].size()) == num_e,
                 "dataset: feature '{}' has {} values for {} events", feature_names[f],
                 features[f].size(), num_e);
  }
}

ItemVocabulary ItemVocabulary::build(const SequenceDataset& dataset) {
  std::vector<int64_t> ids = dataset.items;
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  ItemVocabulary vocab;
  vocab.raw_ids_ = std::move(ids);
  return vocab;
}

ItemVocabulary ItemVocabulary::from_raw_ids(std::vector<int64_t> sorted_raw_ids) {
  for (size_t i = 1; i < sorted_raw_ids.size(); ++i) {
    GENREC_CHECK(sorted_raw_ids[i - 1] < sorted_raw_ids[i],
                 "ItemVocabulary: raw ids must be strictly ascending, but id {} at position {} "
                 "follows {}",
                 sorted_raw_ids[i], i, sorted_raw_ids[i - 1]);
  }
  ItemVocabulary vocab;
  vocab.raw_ids_ = std::move(sorted_raw_ids);
  return vocab;
}

int64_t ItemVocabulary::index_of(int64_t raw_id) const {
  auto it = std::lower_bound(raw_ids_.begin(), raw_ids_.end(), raw_id);
  if (it == raw_ids_.end() || *it != raw_id) return 0;
  return static_cast<int64_t>(it - raw_ids_.begin()) + 1;
}

}  // namespace genrec
