// Grouping is one sort of a row permutation by (user, timestamp, tie key, row), which is total,
// so the result is deterministic and equal-time events keep file order unless asked otherwise.
#include "data/event_table.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"

namespace genrec {

size_t EventTable::add_feature(const std::string& name) {
  feature_names.push_back(name);
  features.emplace_back(users.size(), 0);
  return features.size() - 1;
}

SequenceDataset EventTable::to_dataset(Ties ties) {
  const size_t n = users.size();
  GENREC_CHECK(items.size() == n && timestamps.size() == n && actions.size() == n,
               "EventTable: columns differ in length");
  for (const auto& column : features) {
    GENREC_CHECK(column.size() == n, "EventTable: a feature column differs in length");
  }
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  const bool by_item = ties == Ties::kItemId;
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    if (users[a] != users[b]) return users[a] < users[b];
    if (timestamps[a] != timestamps[b]) return timestamps[a] < timestamps[b];
    if (by_item && items[a] != items[b]) return items[a] < items[b];
    return a < b;
  });

  SequenceDataset ds;
  auto gather = [&](auto& column) {
    std::remove_reference_t<decltype(column)> out(n);
    for (size_t i = 0; i < n; ++i) out[i] = column[order[i]];
    column.clear();
    column.shrink_to_fit();
    return out;
  };
  for (size_t i = 0; i < n; ++i) {
    const int64_t user = users[order[i]];
    if (ds.user_ids.empty() || ds.user_ids.back() != user) {
      if (!ds.user_ids.empty()) ds.offsets.push_back(static_cast<int64_t>(i));
      ds.user_ids.push_back(user);
    }
  }
  if (!ds.user_ids.empty()) ds.offsets.push_back(static_cast<int64_t>(n));
  ds.items = gather(items);
  ds.timestamps = gather(timestamps);
  ds.actions = gather(actions);
  for (auto& column : features) ds.features.push_back(gather(column));
  ds.feature_names = std::move(feature_names);
  users.clear();
  features.clear();
  ds.validate();
  return ds;
}

}  // namespace genrec
