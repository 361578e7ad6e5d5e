// A lookup runs in batched steps: find in hot; find the misses in host (with state, score and
// stamp) and erase them there, then take the rest from the cold tier (which deletes them
// there); insert them all into hot with the whole batch pinned, demoting hot's evicted rows;
// then find_or_insert the batch in hot, which finds the promoted rows, inserts new keys,
// applies the eviction policy's access and demotes again. Demoted rows go to host in one
// batch, and what a full host evicts (or cannot take) is spilled to the cold tier in one batch.
#include "embedding/tiered_table.h"

#include <algorithm>
#include <unordered_set>
#include <utility>

#include "core/error.h"

namespace genrec {
TieredTable::TieredTable(const TableOptions& hot, const TableOptions& host,
                         std::unique_ptr<ColdTier> cold)
    : hot_(hot.as_tier()), host_(host.as_tier()), cold_(std::move(cold)) {
  GENREC_CHECK(hot.max_capacity > 0, "tiered table: the hot tier needs a max_capacity");
  GENREC_CHECK(hot.dim == host.dim && hot.optimizer == host.optimizer,
               "tiered table: tiers differ (dim {} vs {}, optimizer {} vs {})", hot.dim, host.dim,
               optimizer_state_name(hot.optimizer), optimizer_state_name(host.optimizer));
  check_lower_tiers(host, cold_.get(), "tiered table");
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
  TableRows up;  // rows promoted into hot: host's first, then cold's
  std::unordered_set<uint64_t> from_host, from_cold;
  if (m > 0) {
    std::vector<uint8_t> in_host(m);
    std::vector<float> values(m * dim), states(m * sd);
    std::vector<uint64_t> scores(m), stamps(m), rest;
    host_.find(missing.data(), m, values.data(), in_host.data(), states.data(), scores.data(),
               stamps.data());
    for (int64_t j = 0; j < m; ++j) {
      if (!in_host[j]) {
        rest.push_back(missing[j]);
        continue;
      }
      up.keys.push_back(missing[j]);
      up.values.insert(up.values.end(), &values[j * dim], &values[j * dim] + dim);
      up.states.insert(up.states.end(), &states[j * sd], &states[j * sd] + sd);
      up.scores.push_back(scores[j]);
      up.stamps.push_back(stamps[j]);
      from_host.insert(missing[j]);
    }
    if (up.size() > 0) {
      host_.erase(up.keys.data(), up.size());
      stats_.promoted += up.size();
    }
    if (cold_ && !rest.empty()) {
      TableRows cold_rows = cold_->take(rest.data(), static_cast<int64_t>(rest.size()));
      from_cold.insert(cold_rows.keys.begin(), cold_rows.keys.end());
      stats_.fetched += cold_rows.size();
      up.append(cold_rows);
    }
  }
  TableRows evicted;
  if (up.size() > 0) hot_.insert_rows(up, &evicted, keys, n);
  hot_.find_or_insert_pinned(keys, n, values_out, stored, nullptr, &evicted, keys, n);
  if (evicted.size() > 0) demote(evicted);
  // Counted as if one key at a time: a repeated key of the batch is a hot hit.
  std::unordered_set<uint64_t> counted;
  for (int64_t i = 0; i < n; ++i) {
    if (in_hot[i] || !counted.insert(keys[i]).second) {
      ++stats_.hot_hits;
    } else if (from_host.count(keys[i]) != 0) {
      ++stats_.host_hits;
    } else if (from_cold.count(keys[i]) != 0) {
      ++stats_.cold_hits;
    } else {
      ++stats_.misses;
    }
  }
}

void TieredTable::demote(const TableRows& evicted) {
  stats_.demoted += evicted.size();
  store_below_hot(host_, cold_.get(), evicted, removals_, stats_);
}

int64_t TieredTable::erase(const uint64_t* keys, int64_t n) {
  GENREC_CHECK(n >= 0, "tiered table erase: negative batch size {}", n);
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<uint8_t> in_hot(n);
  hot_.contains(keys, n, in_hot.data());
  hot_.erase(keys, n);
  return log_erased(erase_below_hot(host_, cold_.get(), keys, n), keys, in_hot.data(), n, removals_,
                    hot_.step());
}

void TieredTable::insert_rows(const TableRows& rows) {
  std::lock_guard<std::mutex> lock(mutex_);
  insert_rows_below_hot(host_, cold_.get(), rows, removals_, stats_, "tiered table",
                        [&] { hot_.erase(rows.keys.data(), rows.size()); });
}

void TieredTable::find(const uint64_t* keys, int64_t n, float* values_out, uint8_t* found) const {
  std::lock_guard<std::mutex> lock(mutex_);
  hot_.find(keys, n, values_out, found);
  find_below_hot(host_, cold_.get(), keys, n, values_out, found);
}

TableRows TieredTable::export_rows() const {
  std::lock_guard<std::mutex> lock(mutex_);
  TableRows all = hot_.export_rows();
  all.append(host_.export_rows());
  if (cold_) all.append(cold_->export_rows());
  // Merge the key-sorted tiers into one key order.
  const int64_t n = all.size();
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](int64_t a, int64_t b) { return all.keys[a] < all.keys[b]; });
  TableRows out;
  for (int64_t i : order) out.append_row(all, i);
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
