#include "embedding/lower_tiers.h"

#include <algorithm>
#include <vector>

#include "core/error.h"

namespace genrec {
namespace {

// Looks the keys with found[i] == 0 up in one tier (lookup(keys, m, values, found), which fills
// the rows and flags of the keys it holds) and sets their rows and flags; the others stay as they
// are. A batch that is missing entirely is looked up in place.
template <typename Lookup>
void find_missing(const uint64_t* keys, int64_t n, int64_t dim, float* values_out, uint8_t* found,
                  Lookup&& lookup) {
  std::vector<int64_t> rest;
  for (int64_t i = 0; i < n; ++i) {
    if (!found[i]) rest.push_back(i);
  }
  const int64_t m = static_cast<int64_t>(rest.size());
  if (m == 0) return;
  if (m == n) {
    lookup(keys, n, values_out, found);
    return;
  }
  std::vector<uint64_t> rest_keys(m);
  for (int64_t j = 0; j < m; ++j) rest_keys[j] = keys[rest[j]];
  std::vector<float> values(m * dim);
  std::vector<uint8_t> in_tier(m);
  lookup(rest_keys.data(), m, values.data(), in_tier.data());
  for (int64_t j = 0; j < m; ++j) {
    if (!in_tier[j]) continue;
    found[rest[j]] = 1;
    std::copy(&values[j * dim], &values[j * dim] + dim, values_out + rest[j] * dim);
  }
}

}  // namespace

void check_lower_tiers(const TableOptions& host, const ColdTier* cold, const char* table) {
  GENREC_CHECK(cold == nullptr || host.max_capacity > 0,
               "{}: a cold tier needs a host tier with a max_capacity to spill from", table);
}

void store_below_hot(DynamicTable& host, ColdTier* cold, const TableRows& rows,
                     RemovalLog& removals, TierStats& stats) {
  if (rows.size() == 0) return;
  TableRows spill;
  std::vector<uint8_t> stored(rows.size());
  host.insert_rows(rows, &spill, nullptr, 0, stored.data());
  if (cold == nullptr) {  // a bounded host without a cold tier drops what it evicts
    const uint64_t step = host.step();
    removals.append(spill.keys.data(), spill.size(), step);
    for (int64_t i = 0; i < rows.size(); ++i) {
      if (!stored[i]) removals.append(rows.keys[i], step);
    }
    return;
  }
  // Rows host could not take at all (more than its max_capacity) go straight down too.
  for (int64_t i = 0; i < rows.size(); ++i) {
    if (!stored[i]) spill.append_row(rows, i);
  }
  if (spill.size() == 0) return;
  cold->put(spill);
  stats.spilled += spill.size();
}

void insert_rows_below_hot(DynamicTable& host, ColdTier* cold, const TableRows& rows,
                           RemovalLog& removals, TierStats& stats, const char* table,
                           const std::function<void()>& drop_from_hot) {
  const int64_t host_max = host.max_capacity();
  GENREC_CHECK(cold != nullptr || host_max == 0 || host.size() + rows.size() <= host_max,
               "{}: {} rows do not fit the host tier ({} of {} rows used) and there is no cold "
               "tier to hold the rest",
               table, rows.size(), host.size(), host_max);
  drop_from_hot();
  if (cold != nullptr) cold->take(rows.keys.data(), rows.size());
  store_below_hot(host, cold, rows, removals, stats);
}

std::vector<uint64_t> erase_below_hot(DynamicTable& host, ColdTier* cold, const uint64_t* keys,
                                      int64_t n) {
  std::vector<uint8_t> in_host(n);
  host.contains(keys, n, in_host.data());
  host.erase(keys, n);
  std::vector<uint64_t> removed;
  for (int64_t i = 0; i < n; ++i) {
    if (in_host[i]) removed.push_back(keys[i]);
  }
  if (cold != nullptr) {
    const TableRows taken = cold->take(keys, n);
    removed.insert(removed.end(), taken.keys.begin(), taken.keys.end());
  }
  return removed;
}

int64_t log_erased(std::vector<uint64_t> removed, const uint64_t* keys, const uint8_t* in_hot,
                   int64_t n, RemovalLog& removals, uint64_t step) {
  for (int64_t i = 0; i < n; ++i) {
    if (in_hot[i]) removed.push_back(keys[i]);
  }
  std::sort(removed.begin(), removed.end());
  removed.erase(std::unique(removed.begin(), removed.end()), removed.end());
  removals.append(removed.data(), static_cast<int64_t>(removed.size()), step);
  return static_cast<int64_t>(removed.size());
}

void find_below_hot(const DynamicTable& host, const ColdTier* cold, const uint64_t* keys, int64_t n,
                    float* values_out, uint8_t* found) {
  const int64_t dim = host.dim();
  find_missing(keys, n, dim, values_out, found,
               [&](const uint64_t* k, int64_t m, float* v, uint8_t* f) { host.find(k, m, v, f); });
  if (cold == nullptr) return;
  find_missing(keys, n, dim, values_out, found,
               [&](const uint64_t* k, int64_t m, float* v, uint8_t* f) { cold->find(k, m, v, f); });
}

}  // namespace genrec
