// Full tables: victims in (score, key) order per policy, the batch's own keys pinned, and a
// bounded model checked through random batches.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>
#include <vector>

#include "core/error.h"
#include "core/philox.h"
#include "embedding/dynamic_table.h"

namespace genrec {
namespace {

TableOptions bounded(EvictionPolicy policy, int64_t max_capacity) {
  TableOptions opt;
  opt.dim = 2;
  opt.initial_capacity = 8;
  opt.num_shards = 2;
  opt.max_capacity = max_capacity;
  opt.eviction = policy;
  return opt;
}

std::vector<uint64_t> insert(DynamicTable& t, std::vector<uint64_t> keys,
                             std::vector<uint64_t> scores = {}) {
  std::vector<float> out(keys.size() * t.dim());
  TableRows evicted;
  t.find_or_insert(keys.data(), keys.size(), out.data(), nullptr,
                   scores.empty() ? nullptr : scores.data(), &evicted);
  return evicted.keys;
}

std::vector<uint64_t> keys_of(const DynamicTable& t) {
  return t.export_rows().keys;
}

TEST(EmbeddingEviction, LruEvictsLeastRecentlyUsed) {
  DynamicTable t(bounded(EvictionPolicy::kLru, 4));
  for (uint64_t k = 1; k <= 4; ++k) {
    t.set_step(k);
    insert(t, {k});
  }
  t.set_step(5);
  insert(t, {1});  // key 1 is now the most recent
  t.set_step(6);
  EXPECT_EQ(insert(t, {5}), std::vector<uint64_t>({2}));
  t.set_step(7);
  EXPECT_EQ(insert(t, {6, 7}), std::vector<uint64_t>({3, 4}));
  EXPECT_EQ(keys_of(t), std::vector<uint64_t>({1, 5, 6, 7}));
  EXPECT_EQ(t.size(), 4);
  // Ties (same step) are broken by the smaller key.
  t.set_step(8);
  insert(t, {1, 5});
  t.set_step(9);
  EXPECT_EQ(insert(t, {8}), std::vector<uint64_t>({6}));
  EXPECT_EQ(insert(t, {9}), std::vector<uint64_t>({7}));
}

TEST(EmbeddingEviction, LfuEvictsLeastFrequentlyUsed) {
  DynamicTable t(bounded(EvictionPolicy::kLfu, 3));
  insert(t, {10, 10, 10, 20, 30, 30});  // counts 3, 1, 2
  EXPECT_EQ(insert(t, {40}), std::vector<uint64_t>({20}));
  EXPECT_EQ(insert(t, {50}), std::vector<uint64_t>({40}));  // 40 had 1 access, 30 has 2
  insert(t, {50, 50});                                      // 50 now 3
  EXPECT_EQ(insert(t, {60}), std::vector<uint64_t>({30}));
  EXPECT_EQ(keys_of(t), std::vector<uint64_t>({10, 50, 60}));
}

TEST(EmbeddingEviction, EpochLruPrefersNewerEpoch) {
  DynamicTable t(bounded(EvictionPolicy::kEpochLru, 2));
  t.set_epoch(1);
  t.set_step(100);
  insert(t, {1});
  t.set_epoch(2);
  t.set_step(5);  // a smaller step in a newer epoch still ranks higher
  insert(t, {2});
  EXPECT_EQ(t.export_rows().scores, std::vector<uint64_t>({(1ull << 32) | 100, (2ull << 32) | 5}));
  t.set_step(6);
  EXPECT_EQ(insert(t, {3}), std::vector<uint64_t>({1}));
  t.set_step(7);
  EXPECT_EQ(insert(t, {4}), std::vector<uint64_t>({2}));
}

TEST(EmbeddingEviction, EpochLfuPrefersNewerEpoch) {
  DynamicTable t(bounded(EvictionPolicy::kEpochLfu, 2));
  t.set_epoch(1);
  insert(t, {1, 1, 1, 1, 1, 2});  // 1 has 5 accesses in epoch 1
  t.set_epoch(2);
  insert(t, {2});  // 2: epoch 2, count 2
  EXPECT_EQ(t.export_rows().scores, std::vector<uint64_t>({(1ull << 32) | 5, (2ull << 32) | 2}));
  EXPECT_EQ(insert(t, {3}), std::vector<uint64_t>({1}));
}

TEST(EmbeddingEviction, CustomScoresComeFromTheCaller) {
  DynamicTable t(bounded(EvictionPolicy::kCustom, 3));
  insert(t, {1, 2, 3}, {30, 10, 20});
  EXPECT_EQ(insert(t, {4}, {15}), std::vector<uint64_t>({2}));
  EXPECT_EQ(insert(t, {5}, {1}), std::vector<uint64_t>({4}));
  EXPECT_EQ(insert(t, {6, 7}, {100, 100}), std::vector<uint64_t>({5, 3}));
  std::vector<float> out(2);
  EXPECT_THROW(t.find_or_insert(std::vector<uint64_t>{8}.data(), 1, out.data()), Error);
}

TEST(EmbeddingEviction, BatchKeysAreNeverEvicted) {
  DynamicTable t(bounded(EvictionPolicy::kLru, 4));
  for (uint64_t k = 1; k <= 4; ++k) {
    t.set_step(k);
    insert(t, {k});
  }
  t.set_step(10);
  // Key 1 has the lowest score but is in the batch: key 2 goes instead.
  TableRows evicted;
  std::vector<uint64_t> keys = {9, 1};
  std::vector<float> out(4);
  t.find_or_insert(keys.data(), 2, out.data(), nullptr, nullptr, &evicted);
  EXPECT_EQ(evicted.keys, std::vector<uint64_t>({2}));
  EXPECT_TRUE(t.contains(1));
  // A batch larger than the table: only the first new keys that fit are stored, the others
  // get the initializer's row and a 0 flag; the batch's present keys stay.
  keys = {1, 20, 21, 22, 23};
  std::vector<uint8_t> stored(5);
  out.assign(10, -1.0f);
  evicted.clear();
  t.find_or_insert(keys.data(), 5, out.data(), stored.data(), nullptr, &evicted);
  EXPECT_EQ(stored, std::vector<uint8_t>({1, 1, 1, 1, 0}));
  EXPECT_EQ(out[8], 0.0f);
  EXPECT_EQ(evicted.keys, std::vector<uint64_t>({3, 4, 9}));
  EXPECT_EQ(keys_of(t), std::vector<uint64_t>({1, 20, 21, 22}));
  // insert_or_assign pins too and returns the evicted rows' values.
  std::vector<uint64_t> k2 = {1, 30};
  std::vector<float> v2 = {5, 5, 6, 6};
  evicted.clear();
  t.set_step(11);
  t.insert_or_assign(k2.data(), v2.data(), 2, nullptr, &evicted);
  ASSERT_EQ(evicted.size(), 1);
  EXPECT_EQ(evicted.keys[0], 20u);
  EXPECT_EQ(evicted.scores[0], 10u);
  EXPECT_EQ(evicted.values, std::vector<float>({0, 0}));
}

// Random batches on a full table against a model of the documented rules.
void random_full_table(EvictionPolicy policy, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << "policy " << eviction_policy_name(policy));
  constexpr int64_t kMax = 24;
  TableOptions opt = bounded(policy, kMax);
  DynamicTable t(opt);
  struct Row {
    float value;
    uint64_t score;
  };
  std::map<uint64_t, Row> model;
  Philox rng(seed);
  for (int iter = 0; iter < 300; ++iter) {
    const uint64_t step = iter + 1, epoch = iter / 40;
    t.set_step(step);
    t.set_epoch(epoch);
    const int64_t n = 1 + rng.below(12);
    std::vector<uint64_t> keys(n), custom(n);
    for (auto& k : keys) k = rng.below(80);
    for (auto& c : custom) c = rng.below(50);
    const uint64_t* scores = policy == EvictionPolicy::kCustom ? custom.data() : nullptr;
    const bool assign_values = rng.below(2) == 0;
    std::vector<float> values(n * 2);
    for (int64_t i = 0; i < n; ++i) values[2 * i] = values[2 * i + 1] = float(iter * 100 + i);
    // Model: plan new keys, evict the lowest (score, key) unpinned rows, then apply in order.
    std::set<uint64_t> batch(keys.begin(), keys.end()), fresh;
    std::vector<uint64_t> order;
    for (uint64_t k : keys) {
      if (!model.count(k) && fresh.insert(k).second) order.push_back(k);
    }
    int64_t need = static_cast<int64_t>(model.size() + order.size()) - kMax;
    std::vector<std::pair<uint64_t, uint64_t>> cands;
    for (auto& [k, r] : model) {
      if (!batch.count(k)) cands.push_back({r.score, k});
    }
    std::sort(cands.begin(), cands.end());
    std::vector<uint64_t> want_evicted;
    for (int64_t v = 0; v < need && v < static_cast<int64_t>(cands.size()); ++v) {
      want_evicted.push_back(cands[v].second);
      model.erase(cands[v].second);
    }
    std::set<uint64_t> refused;
    for (int64_t v = static_cast<int64_t>(want_evicted.size()); v < need; ++v) {
      refused.insert(order[order.size() - (need - v)]);
    }
    std::vector<uint8_t> want_stored(n);
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t k = keys[i];
      if (refused.count(k)) continue;
      auto it = model.find(k);
      const bool is_new = it == model.end();
      Row& r = model[k];
      if (is_new) r.value = 0.0f;
      if (assign_values) r.value = values[2 * i];
      r.score = score_after_access(policy, is_new, is_new ? 0 : r.score, step, epoch, custom[i]);
      want_stored[i] = 1;
    }
    TableRows evicted;
    std::vector<uint8_t> stored(n);
    if (assign_values) {
      t.insert_or_assign(keys.data(), values.data(), n, scores, &evicted, stored.data());
    } else {
      std::vector<float> out(n * 2);
      t.find_or_insert(keys.data(), n, out.data(), stored.data(), scores, &evicted);
    }
    ASSERT_EQ(evicted.keys, want_evicted) << "iter " << iter;
    ASSERT_EQ(stored, want_stored) << "iter " << iter;
    TableRows rows = t.export_rows();
    ASSERT_EQ(rows.size(), static_cast<int64_t>(model.size()));
    ASSERT_LE(rows.size(), kMax);
    int64_t i = 0;
    for (auto& [k, r] : model) {
      ASSERT_EQ(rows.keys[i], k) << "iter " << iter;
      ASSERT_EQ(rows.values[2 * i], r.value) << "iter " << iter << " key " << k;
      ASSERT_EQ(rows.scores[i], r.score) << "iter " << iter << " key " << k;
      ++i;
    }
  }
}

TEST(EmbeddingEviction, RandomBatchesOnFullTableMatchModel) {
  random_full_table(EvictionPolicy::kLru, 11);
  random_full_table(EvictionPolicy::kLfu, 12);
  random_full_table(EvictionPolicy::kEpochLru, 13);
  random_full_table(EvictionPolicy::kEpochLfu, 14);
  random_full_table(EvictionPolicy::kCustom, 15);
}

TEST(EmbeddingEviction, ScoreFunctionAndNames) {
  EXPECT_EQ(score_after_access(EvictionPolicy::kLfu, false, ~0ull, 0, 0, 0), ~0ull);
  EXPECT_EQ(
      score_after_access(EvictionPolicy::kEpochLfu, false, (3ull << 32) | 0xFFFFFFFFull, 0, 4, 0),
      (4ull << 32) | 0xFFFFFFFFull);
  EXPECT_EQ(parse_eviction_policy("epoch_lru"), EvictionPolicy::kEpochLru);
  EXPECT_THROW(parse_eviction_policy("fifo"), Error);
}

}  // namespace
}  // namespace genrec
