// The dump/load round trip of a TieredTable, shared by the tests with and without a cold tier:
// random lookups with optimizer steps move rows between the tiers; a full dump taken halfway
// plus an incremental dump at the end, and a full dump at the end, must each restore every row
// of every tier exactly (key, values, optimizer state, score, stamp) into an empty table, and
// loading over a table that holds the keys must leave each key in one tier.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/philox.h"
#include "embedding/sparse_optimizer.h"
#include "embedding/table_dump.h"
#include "embedding/tiered_table.h"

namespace genrec::test {

inline void expect_same_rows(const TableRows& a, const TableRows& b, const char* where) {
  ASSERT_EQ(a.keys, b.keys) << where;
  EXPECT_EQ(a.scores, b.scores) << where;
  EXPECT_EQ(a.stamps, b.stamps) << where;
  ASSERT_EQ(a.values.size(), b.values.size()) << where;
  ASSERT_EQ(a.states.size(), b.states.size()) << where;
  EXPECT_EQ(0, std::memcmp(a.values.data(), b.values.data(), 4 * a.values.size())) << where;
  EXPECT_EQ(0, std::memcmp(a.states.data(), b.states.data(), 4 * a.states.size())) << where;
}

// The hot tier of the round-trip tests: 3 floats and Adam state per row, 8 rows.
inline TableOptions round_trip_hot_options() {
  TableOptions hot;
  hot.dim = 3;
  hot.optimizer = OptimizerState::kAdam;
  hot.max_capacity = 8;
  hot.initializer = {InitKind::kUniform, 1.0f, 5};
  return hot;
}

// `make` builds an empty table of the tested shape; `dir` is an existing scratch directory.
template <typename Make>
void check_tiered_dump_round_trip(Make&& make, const std::string& dir) {
  auto table = make();
  TieredTable& t = *table;
  const int64_t dim = t.hot().dim();
  SparseOptimizer optimizer(SparseOptimizerConfig{});
  Philox rng(41);
  const uint64_t kHalf = 20, kSteps = 40;
  for (uint64_t step = 1; step <= kSteps; ++step) {
    t.set_step(step);
    std::vector<uint64_t> keys(6);
    for (auto& k : keys) k = 1 + rng.below(60);
    std::vector<float> out(keys.size() * dim), grads(keys.size() * dim);
    t.find_or_insert(keys.data(), static_cast<int64_t>(keys.size()), out.data());
    for (auto& g : grads) g = rng.uniform() - 0.5f;
    optimizer.step(t.hot(), keys.data(), grads.data(), static_cast<int64_t>(keys.size()));
    if (step == kHalf) {
      EXPECT_GT(dump_table(t, dir + "/half.dump"), 0);
    }
  }
  // Keys erased after the half-way dump: its incremental dump carries them as tombstones.
  const TableRows live = t.export_rows();
  const std::vector<uint64_t> erased = {live.keys[0], live.keys[live.size() / 2]};
  EXPECT_EQ(t.erase(erased.data(), 2), 2);
  EXPECT_EQ(t.removed_since(kSteps - 1), erased);
  const TableRows want = t.export_rows();
  ASSERT_GT(t.host().size() + (t.cold() ? t.cold()->size() : 0), 0) << "rows left hot";
  EXPECT_LT(dump_table_since(t, dir + "/since.dump", kHalf), want.size());
  EXPECT_EQ(dump_table(t, dir + "/all.dump"), want.size());

  auto from_full = make();
  load_table(*from_full, dir + "/all.dump");
  expect_same_rows(from_full->export_rows(), want, "full dump");
  EXPECT_EQ(from_full->size(), want.size());

  auto from_increments = make();
  load_table(*from_increments, dir + "/half.dump");
  const TableDumpInfo info = load_table(*from_increments, dir + "/since.dump");
  EXPECT_TRUE(info.incremental);
  expect_same_rows(from_increments->export_rows(), want, "half + incremental dump");

  // Loading over rows that already exist (in hot here) replaces them, one tier per key.
  load_table(t, dir + "/half.dump");
  load_table(t, dir + "/since.dump");
  EXPECT_EQ(t.size(), want.size());
  expect_same_rows(t.export_rows(), want, "loaded over itself");
}

}  // namespace genrec::test
