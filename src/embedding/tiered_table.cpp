// A lookup runs in four batched steps: find in hot; find the misses in host (with state,
// score and stamp) and erase them there; insert them into hot with the whole batch pinned,
// demoting hot's evicted rows to host; then find_or_insert the batch in hot, which finds the
// promoted rows, inserts new keys, applies the eviction policy's access and demotes again.
#include "embedding/tiered_table.h"

#include <algorithm>
#include <unordered_set>

#include "core/error.h"

namespace genrec {

TieredTable::TieredTable(const TableOptions& hot, const TableOptions& host)
    : hot_(hot), host_(host) {
  GENREC_CHECK(hot.max_capacity > 0, "tiered table: the hot tier needs a max_capacity");
  GENREC_CHECK(hot.dim == host.dim && hot.optimizer == host.optimizer,
               "tiered table: tiers differ (dim {} vs {}, optimizer {} vs {})", hot.dim, host.dim,
               optimizer_state_name(hot.optimizer), optimizer_state_name(host.optimizer));
}

void TieredTable::set_step(uint64_t step) {
  hot_.set_step(step);
  host_.set_step(step);
}

void TieredTable::set_epoch(uint64_t epoch) {
  hot_.set_epoch(epoch);
  host_.set_epoch(epoch);
}

void TieredTable::find_or_insert(const uint64_t* keys, int64_t n, float* values_out,
                                 uint8_t* stored) {
  std::lock_guard<std::mutex> lock(mutex_);
  const int64_t dim = hot_.dim();
  std::vector<uint8_t> in_hot(n);
  std::vector<float> scratch(n * dim);
  hot_.find(keys, n, scratch.data(), in_hot.data());

  std::vector<uint64_t> missing;
  std::unordered_set<uint64_t> seen;
  for (int64_t i = 0; i < n; ++i) {
    if (seen.insert(keys[i]).second && !in_hot[i]) missing.push_back(keys[i]);
  }
  GENREC_CHECK(static_cast<int64_t>(seen.size()) <= hot_.max_capacity(),
               "tiered table: a batch of {} distinct keys does not fit the hot tier ({} rows)",
               seen.size(), hot_.max_capacity());
  const int64_t m = static_cast<int64_t>(missing.size()), sd = hot_.state_dim();
  TableRows found_rows;
  std::unordered_set<uint64_t> promoted_keys;
  if (m > 0) {
    std::vector<uint8_t> in_host(m);
    std::vector<float> values(m * dim), states(m * sd);
    std::vector<uint64_t> scores(m), stamps(m);
    host_.find(missing.data(), m, values.data(), in_host.data(), states.data(), scores.data(),
               stamps.data());
    for (int64_t j = 0; j < m; ++j) {
      if (!in_host[j]) continue;
      found_rows.keys.push_back(missing[j]);
      found_rows.values.insert(found_rows.values.end(), &values[j * dim], &values[j * dim] + dim);
      found_rows.states.insert(found_rows.states.end(), &states[j * sd], &states[j * sd] + sd);
      found_rows.scores.push_back(scores[j]);
      found_rows.stamps.push_back(stamps[j]);
      promoted_keys.insert(missing[j]);
    }
  }
  TableRows evicted;
  if (found_rows.size() > 0) {
    host_.erase(found_rows.keys.data(), found_rows.size());
    hot_.insert_rows(found_rows, &evicted, keys, n);
    stats_.promoted += found_rows.size();
  }
  hot_.find_or_insert_pinned(keys, n, values_out, stored, nullptr, &evicted, keys, n);
  if (evicted.size() > 0) {
    host_.insert_rows(evicted);
    stats_.demoted += evicted.size();
  }
  // Counted as if one key at a time: a repeated key of the batch is a hot hit.
  std::unordered_set<uint64_t> counted;
  for (int64_t i = 0; i < n; ++i) {
    if (in_hot[i] || !counted.insert(keys[i]).second) {
      ++stats_.hot_hits;
    } else if (promoted_keys.count(keys[i]) != 0) {
      ++stats_.host_hits;
    } else {
      ++stats_.misses;
    }
  }
}

void TieredTable::find(const uint64_t* keys, int64_t n, float* values_out, uint8_t* found) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const int64_t dim = hot_.dim();
  hot_.find(keys, n, values_out, found);
  std::vector<int64_t> rest;
  for (int64_t i = 0; i < n; ++i) {
    if (!found[i]) rest.push_back(i);
  }
  if (rest.empty()) return;
  const int64_t m = static_cast<int64_t>(rest.size());
  std::vector<uint64_t> rest_keys(m);
  for (int64_t j = 0; j < m; ++j) rest_keys[j] = keys[rest[j]];
  std::vector<float> values(m * dim);
  std::vector<uint8_t> in_host(m);
  host_.find(rest_keys.data(), m, values.data(), in_host.data());
  for (int64_t j = 0; j < m; ++j) {
    if (!in_host[j]) continue;
    found[rest[j]] = 1;
    std::copy(&values[j * dim], &values[j * dim] + dim, values_out + rest[j] * dim);
  }
}

TableRows TieredTable::export_rows() const {
  std::lock_guard<std::mutex> lock(mutex_);
  TableRows hot = hot_.export_rows(), host = host_.export_rows();
  hot.append(host);
  // Merge the two key-sorted tiers into one key order.
  const int64_t n = hot.size(), dim = hot_.dim(), sd = hot_.state_dim();
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](int64_t a, int64_t b) { return hot.keys[a] < hot.keys[b]; });
  TableRows out;
  for (int64_t i : order) {
    out.keys.push_back(hot.keys[i]);
    out.values.insert(out.values.end(), &hot.values[i * dim], &hot.values[i * dim] + dim);
    out.states.insert(out.states.end(), hot.states.begin() + i * sd,
                      hot.states.begin() + (i + 1) * sd);
    out.scores.push_back(hot.scores[i]);
    out.stamps.push_back(hot.stamps[i]);
  }
  return out;
}

TierStats TieredTable::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void TieredTable::reset_stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_ = TierStats{};
}

}  // namespace genrec
