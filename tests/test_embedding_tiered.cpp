// Tiered table: hot/host hit and miss counts, and rows keeping values, optimizer state and
// stamps as they move between the tiers.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include "core/error.h"
#include "embedding/sparse_optimizer.h"
#include "embedding/tiered_table.h"
#include "tiered_dump_check.h"

namespace genrec {
namespace {

TEST(EmbeddingTiered, HitsMissesAndRowMovement) {
  TableOptions hot;
  hot.dim = 3;
  hot.optimizer = OptimizerState::kAdam;
  hot.max_capacity = 4;
  hot.num_shards = 2;
  hot.initializer = {InitKind::kUniform, 1.0f, 9};
  TableOptions host = hot;
  host.max_capacity = 0;
  TieredTable t(hot, host);
  const int64_t dim = 3;
  auto lookup = [&](std::vector<uint64_t> keys) {
    std::vector<float> out(keys.size() * dim);
    std::vector<uint8_t> stored(keys.size());
    t.find_or_insert(keys.data(), keys.size(), out.data(), stored.data());
    for (auto s : stored) EXPECT_EQ(s, 1);
    return out;
  };
  t.set_step(1);
  lookup({1, 2, 3, 4, 1});
  TierStats s = t.stats();
  EXPECT_EQ(s.misses, 4);
  EXPECT_EQ(s.hot_hits, 1) << "the repeated 1 is a hot hit";
  EXPECT_EQ(s.host_hits, 0);
  // Give the rows optimizer state and distinct values.
  SparseOptimizer opt(SparseOptimizerConfig{});
  std::vector<uint64_t> ids = {1, 2, 3, 4};
  std::vector<float> grads = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  t.set_step(2);
  ASSERT_EQ(opt.step(t.hot(), ids.data(), grads.data(), 4), 4);
  TableRows before = t.export_rows();
  ASSERT_EQ(before.size(), 4);
  // Two new keys push the two least recently used rows (2 and 3 at step 1 vs 1 and 4 at 3)
  // down to host.
  t.set_step(3);
  lookup({1, 4});
  t.set_step(4);
  lookup({5, 6});
  s = t.stats();
  EXPECT_EQ(s.demoted, 2);
  EXPECT_EQ(t.hot().size(), 4);
  EXPECT_EQ(t.host().size(), 2);
  EXPECT_TRUE(t.host().contains(2));
  EXPECT_TRUE(t.host().contains(3));
  EXPECT_FALSE(t.hot().contains(2));
  // Key 2 comes back up: a host hit, with its values and state intact.
  t.set_step(5);
  std::vector<float> out = lookup({2, 5, 2});
  s = t.stats();
  EXPECT_EQ(s.host_hits, 1);
  EXPECT_EQ(s.hot_hits, 1 + 2 + 2);
  EXPECT_EQ(s.misses, 4 + 2);
  EXPECT_EQ(s.promoted, 1);
  EXPECT_EQ(s.demoted, 3);
  EXPECT_TRUE(t.hot().contains(2));
  EXPECT_FALSE(t.host().contains(2));
  EXPECT_EQ(0, std::memcmp(out.data(), &before.values[1 * dim], 4 * dim));
  TableRows after = t.export_rows();
  ASSERT_EQ(after.size(), 6);
  const int64_t sd = t.hot().state_dim();
  for (int64_t i = 0; i < before.size(); ++i) {
    int64_t j = 0;
    while (after.keys[j] != before.keys[i]) ++j;
    EXPECT_EQ(0, std::memcmp(&after.values[j * dim], &before.values[i * dim], 4 * dim))
        << "key " << before.keys[i];
    EXPECT_EQ(0, std::memcmp(&after.states[j * sd], &before.states[i * sd], 4 * sd))
        << "key " << before.keys[i];
    EXPECT_EQ(after.stamps[j], before.stamps[i]) << "key " << before.keys[i];
  }
  // find looks in both tiers without moving rows.
  std::vector<uint64_t> k = {3, 2, 99};
  std::vector<float> f(9);
  std::vector<uint8_t> found(3);
  t.find(k.data(), 3, f.data(), found.data());
  EXPECT_EQ(found, std::vector<uint8_t>({1, 1, 0}));
  EXPECT_EQ(0, std::memcmp(f.data(), &before.values[2 * dim], 4 * dim));
  EXPECT_TRUE(t.host().contains(3));
  t.reset_stats();
  EXPECT_EQ(t.stats().hot_hits, 0);
}

TEST(EmbeddingTiered, BatchLargerThanHotIsRefused) {
  TableOptions hot;
  hot.dim = 2;
  hot.max_capacity = 2;
  TableOptions host = hot;
  host.max_capacity = 0;
  TieredTable t(hot, host);
  std::vector<uint64_t> keys = {1, 2, 3};
  std::vector<float> out(6);
  EXPECT_THROW(t.find_or_insert(keys.data(), 3, out.data()), Error);
  hot.max_capacity = 0;
  EXPECT_THROW(TieredTable(hot, host), Error);
}

// Dumps cover hot and host; loads restore every row exactly and keep one tier per key.
TEST(EmbeddingTiered, DumpAndLoadRoundTripOverTiers) {
  const auto dir = std::filesystem::path(testing::TempDir()) / "genrec_tiered_dump";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  auto make = [] {
    const TableOptions hot = test::round_trip_hot_options();
    TableOptions host = hot;
    host.max_capacity = 0;
    return std::make_unique<TieredTable>(hot, host);
  };
  test::check_tiered_dump_round_trip(make, dir.string());
}

// Without a cold tier, rows that a bounded host cannot hold are refused, not dropped.
TEST(EmbeddingTiered, LoadBeyondABoundedHostIsRefused) {
  TableOptions hot;
  hot.dim = 2;
  hot.max_capacity = 2;
  TableOptions host = hot;
  host.max_capacity = 3;
  TieredTable t(hot, host);
  TableRows rows;
  for (uint64_t k = 1; k <= 4; ++k) {
    rows.keys.push_back(k);
    rows.values.insert(rows.values.end(), {1.0f, 2.0f});
    rows.scores.push_back(k);
    rows.stamps.push_back(k);
  }
  EXPECT_THROW(t.insert_rows(rows), Error);
  EXPECT_EQ(t.size(), 0);
}

}  // namespace
}  // namespace genrec
