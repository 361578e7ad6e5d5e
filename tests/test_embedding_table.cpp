// DynamicTable against a std::unordered_map model: random batches of every operation with
// duplicate keys, growth, both eviction-free policies' scores, and concurrent batches.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "core/philox.h"
#include "embedding/dynamic_table.h"

namespace genrec {
namespace {

struct ModelRow {
  std::vector<float> value;
  uint64_t score = 0, stamp = 0;
};

// The documented semantics of an unbounded table, one key at a time in batch order.
struct Model {
  TableOptions opt;
  uint64_t step = 0;
  std::unordered_map<uint64_t, ModelRow> rows;

  uint64_t score(bool is_new, uint64_t old) const {
    return score_after_access(opt.eviction, is_new, old, step, 0, 0);
  }
  void find_or_insert(const std::vector<uint64_t>& keys, std::vector<float>& out) {
    const int64_t dim = opt.dim;
    out.assign(keys.size() * dim, 0.0f);
    for (size_t i = 0; i < keys.size(); ++i) {
      auto it = rows.find(keys[i]);
      if (it == rows.end()) {
        ModelRow r;
        r.value.resize(dim);
        opt.initializer.fill(keys[i], r.value.data(), dim);
        r.score = score(true, 0);
        r.stamp = step;
        it = rows.emplace(keys[i], r).first;
      } else {
        it->second.score = score(false, it->second.score);
      }
      std::copy(it->second.value.begin(), it->second.value.end(), out.begin() + i * dim);
    }
  }
  void insert_or_assign(const std::vector<uint64_t>& keys, const std::vector<float>& v) {
    const int64_t dim = opt.dim;
    for (size_t i = 0; i < keys.size(); ++i) {
      auto it = rows.find(keys[i]);
      const bool is_new = it == rows.end();
      ModelRow& r = rows[keys[i]];
      r.value.assign(v.begin() + i * dim, v.begin() + (i + 1) * dim);
      r.score = score(is_new, is_new ? 0 : r.score);
      r.stamp = step;
    }
  }
  int64_t assign(const std::vector<uint64_t>& keys, const std::vector<float>& v) {
    const int64_t dim = opt.dim;
    int64_t count = 0;
    for (size_t i = 0; i < keys.size(); ++i) {
      auto it = rows.find(keys[i]);
      if (it == rows.end()) continue;
      it->second.value.assign(v.begin() + i * dim, v.begin() + (i + 1) * dim);
      it->second.score = score(false, it->second.score);
      it->second.stamp = step;
      ++count;
    }
    return count;
  }
  int64_t erase(const std::vector<uint64_t>& keys) {
    int64_t count = 0;
    for (uint64_t k : keys) count += static_cast<int64_t>(rows.erase(k));
    return count;
  }
};

void expect_same(const DynamicTable& table, const Model& model) {
  ASSERT_EQ(table.size(), static_cast<int64_t>(model.rows.size()));
  TableRows rows = table.export_rows();
  ASSERT_EQ(rows.size(), static_cast<int64_t>(model.rows.size()));
  const int64_t dim = table.dim();
  for (int64_t i = 0; i < rows.size(); ++i) {
    if (i > 0) {
      ASSERT_LT(rows.keys[i - 1], rows.keys[i]) << "export is sorted by key";
    }
    auto it = model.rows.find(rows.keys[i]);
    ASSERT_NE(it, model.rows.end()) << "unexpected key " << rows.keys[i];
    ASSERT_EQ(0, std::memcmp(&rows.values[i * dim], it->second.value.data(), 4 * dim))
        << "value of key " << rows.keys[i];
    ASSERT_EQ(rows.scores[i], it->second.score) << "score of key " << rows.keys[i];
    ASSERT_EQ(rows.stamps[i], it->second.stamp) << "stamp of key " << rows.keys[i];
  }
}

void random_ops(EvictionPolicy policy, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << "policy " << eviction_policy_name(policy));
  TableOptions opt;
  opt.dim = 5;
  opt.initial_capacity = 16;
  opt.num_shards = 4;
  opt.eviction = policy;
  opt.initializer = {InitKind::kUniform, 0.5f, 7};
  DynamicTable table(opt);
  Model model;
  model.opt = opt;
  Philox rng(seed);
  const int64_t dim = opt.dim;
  int64_t initial_capacity = table.capacity();
  for (int iter = 0; iter < 400; ++iter) {
    model.step = iter + 1;
    table.set_step(iter + 1);
    // Mostly small batches from a small key range (duplicates, hits), sometimes a large one
    // that runs on the thread pool.
    const int64_t n = rng.below(20) == 0 ? 4096 + rng.below(2000) : rng.below(40);
    const uint64_t range = n > 1000 ? 20000 : 600;
    std::vector<uint64_t> keys(n);
    for (auto& k : keys) k = rng.below(range) * 0x9E3779B97F4A7C15ull;  // spread, includes 0
    std::vector<float> values(n * dim);
    for (auto& v : values) v = rng.uniform();
    switch (rng.below(6)) {
      case 0: {
        std::vector<float> got(n * dim), want;
        std::vector<uint8_t> stored(n, 7);
        table.find_or_insert(keys.data(), n, got.data(), stored.data());
        model.find_or_insert(keys, want);
        ASSERT_EQ(0, std::memcmp(got.data(), want.data(), 4 * n * dim)) << "iter " << iter;
        for (auto s : stored) ASSERT_EQ(s, 1);
        break;
      }
      case 1:
        table.insert_or_assign(keys.data(), values.data(), n);
        model.insert_or_assign(keys, values);
        break;
      case 2:
        ASSERT_EQ(table.assign(keys.data(), values.data(), n), model.assign(keys, values));
        break;
      case 3:
        ASSERT_EQ(table.erase(keys.data(), n), model.erase(keys));
        break;
      case 4: {
        std::vector<float> got(n * dim, -1.0f);
        std::vector<uint8_t> found(n, 7);
        std::vector<uint64_t> scores(n), stamps(n);
        table.find(keys.data(), n, got.data(), found.data(), nullptr, scores.data(), stamps.data());
        for (int64_t i = 0; i < n; ++i) {
          auto it = model.rows.find(keys[i]);
          ASSERT_EQ(found[i], it != model.rows.end() ? 1 : 0);
          if (it == model.rows.end()) {
            ASSERT_EQ(got[i * dim], -1.0f) << "a missing key's output row is untouched";
            continue;
          }
          ASSERT_EQ(0, std::memcmp(&got[i * dim], it->second.value.data(), 4 * dim));
          ASSERT_EQ(scores[i], it->second.score);
          ASSERT_EQ(stamps[i], it->second.stamp);
        }
        break;
      }
      default:
        if (rng.below(4) == 0) table.reserve(std::min<int64_t>(table.capacity() * 2, 1 << 16));
        expect_same(table, model);
        break;
    }
    if (testing::Test::HasFatalFailure()) return;
  }
  expect_same(table, model);
  EXPECT_GT(table.capacity(), initial_capacity) << "the table grew";
  EXPECT_LE(table.size(), table.capacity() * opt.max_load_factor);
}

TEST(EmbeddingTable, RandomOperationsMatchModelLru) {
  random_ops(EvictionPolicy::kLru, 1);
}
TEST(EmbeddingTable, RandomOperationsMatchModelLfu) {
  random_ops(EvictionPolicy::kLfu, 2);
}

TEST(EmbeddingTable, DuplicateKeysInOneBatchActInOrder) {
  TableOptions opt;
  opt.dim = 2;
  opt.eviction = EvictionPolicy::kLfu;
  DynamicTable table(opt);
  std::vector<uint64_t> keys = {5, 9, 5, 5};
  std::vector<float> values = {1, 1, 2, 2, 3, 3, 4, 4};
  table.insert_or_assign(keys.data(), values.data(), 4);
  EXPECT_EQ(table.size(), 2);
  std::vector<float> out(8);
  std::vector<uint8_t> found(4);
  table.find(keys.data(), 4, out.data(), found.data());
  EXPECT_EQ(out[0], 4.0f) << "the last write of key 5 wins";
  EXPECT_EQ(out[2], 2.0f);
  TableRows rows = table.export_rows();
  ASSERT_EQ(rows.size(), 2);
  EXPECT_EQ(rows.scores[0], 3u) << "three accesses of key 5 (LFU)";
  EXPECT_EQ(rows.scores[1], 1u);
  // find_or_insert: one insertion, later occurrences find the row.
  std::vector<uint64_t> k2 = {77, 77};
  std::vector<float> out2(4);
  table.find_or_insert(k2.data(), 2, out2.data());
  EXPECT_EQ(table.size(), 3);
  EXPECT_EQ(table.export_rows().scores[2], 2u);
}

TEST(EmbeddingTable, InitializerDependsOnlyOnKey) {
  for (InitKind kind : {InitKind::kUniform, InitKind::kNormal}) {
    TableOptions opt;
    opt.dim = 64;
    opt.initializer = {kind, 0.1f, 42};
    DynamicTable a(opt), b(opt);
    std::vector<uint64_t> ka = {1, 2, 3, 1000}, kb = {999, 1000, 5};
    std::vector<float> va(4 * 64), vb(3 * 64);
    a.find_or_insert(ka.data(), 4, va.data());
    b.find_or_insert(kb.data(), 3, vb.data());
    EXPECT_EQ(0, std::memcmp(&va[3 * 64], &vb[1 * 64], 4 * 64)) << "same key, same row";
    EXPECT_NE(0, std::memcmp(&va[0], &va[64], 4 * 64)) << "different keys differ";
    double sum = 0, sq = 0, maxabs = 0;
    for (float v : va) {
      sum += v;
      sq += v * v;
      maxabs = std::max<double>(maxabs, std::abs(v));
    }
    if (kind == InitKind::kUniform) {
      EXPECT_LE(maxabs, 0.1);
    }
    const double sd = std::sqrt(sq / va.size());
    EXPECT_GT(sd, 0.03);
    EXPECT_LT(sd, 0.15);
  }
}

TEST(EmbeddingTable, ReservedKeyAndBadOptionsAreRefused) {
  TableOptions opt;
  opt.dim = 4;
  DynamicTable table(opt);
  std::vector<int64_t> keys = {3, -1};
  std::vector<float> out(8);
  EXPECT_THROW(table.find_or_insert(keys.data(), 2, out.data()), Error);
  EXPECT_EQ(table.size(), 0) << "a refused batch stores nothing";
  std::vector<uint64_t> k = {1};
  std::vector<uint64_t> scores = {5};
  EXPECT_THROW(table.find_or_insert(k.data(), 1, out.data(), nullptr, scores.data()), Error)
      << "scores with a non-custom policy";
  opt.num_shards = 3;
  EXPECT_THROW(DynamicTable{opt}, Error);
  opt.num_shards = 4;
  opt.dim = 0;
  EXPECT_THROW(DynamicTable{opt}, Error);
}

TEST(EmbeddingTable, ReserveClearAndContains) {
  TableOptions opt;
  opt.dim = 3;
  opt.initial_capacity = 8;
  opt.num_shards = 2;
  DynamicTable table(opt);
  std::vector<uint64_t> keys(100);
  std::vector<float> values(300);
  for (int i = 0; i < 100; ++i) {
    keys[i] = i;
    values[3 * i] = static_cast<float>(i);
  }
  table.insert_or_assign(keys.data(), values.data(), 100);
  table.reserve(4096);
  EXPECT_GE(table.capacity(), 4096);
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(table.contains(keys[i]));
  EXPECT_FALSE(table.contains(100));
  TableRows rows = table.export_rows();
  for (int i = 0; i < 100; ++i) EXPECT_EQ(rows.values[3 * i], static_cast<float>(i));
  auto even = table.export_rows([](uint64_t k, uint64_t, uint64_t) { return k % 2 == 0; });
  EXPECT_EQ(even.size(), 50);
  const int64_t cap = table.capacity();
  table.clear();
  EXPECT_EQ(table.size(), 0);
  EXPECT_EQ(table.capacity(), cap);
  EXPECT_FALSE(table.contains(5));
}

// Threads write batches concurrently; every key ends with one of the rows written for it.
TEST(EmbeddingTable, ConcurrentBatchesLeaveConsistentRows) {
  TableOptions opt;
  opt.dim = 4;
  opt.initial_capacity = 64;
  opt.num_shards = 8;
  DynamicTable table(opt);
  constexpr int kThreads = 4, kIters = 60;
  const int64_t dim = opt.dim;
  // A row written by thread t in iteration it for key k: (t, it, k, t + it).
  auto row_of = [](int t, int it, uint64_t k) {
    return std::vector<float>{float(t), float(it), float(k % 100000), float(t + it)};
  };
  std::vector<std::map<uint64_t, std::vector<int>>> written(kThreads);  // key -> iterations
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Philox rng(100 + t);
      for (int it = 0; it < kIters; ++it) {
        const int64_t n = it % 10 == 0 ? 5000 : 50;
        std::vector<uint64_t> keys(n);
        for (auto& k : keys) {
          // Half disjoint (own range), half overlapping (shared range).
          k = rng.below(2) == 0 ? 1000000 * (t + 1) + rng.below(3000) : rng.below(3000);
        }
        std::vector<float> values(n * dim);
        for (int64_t i = 0; i < n; ++i) {
          auto r = row_of(t, it, keys[i]);
          std::copy(r.begin(), r.end(), values.begin() + i * dim);
        }
        if (it % 3 == 2) {
          std::vector<float> out(n * dim);
          table.find_or_insert(keys.data(), n, out.data());
          for (int64_t i = 0; i < n; ++i) written[t][keys[i]];  // may stay zero-initialised
        } else {
          table.insert_or_assign(keys.data(), values.data(), n);
          for (int64_t i = 0; i < n; ++i) written[t][keys[i]].push_back(it);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  std::set<uint64_t> all;
  for (auto& w : written)
    for (auto& [k, its] : w) all.insert(k);
  TableRows rows = table.export_rows();
  ASSERT_EQ(rows.size(), static_cast<int64_t>(all.size()));
  ASSERT_EQ(table.size(), rows.size());
  for (int64_t i = 0; i < rows.size(); ++i) {
    const uint64_t k = rows.keys[i];
    ASSERT_TRUE(all.count(k));
    std::vector<float> got(&rows.values[i * dim], &rows.values[i * dim] + dim);
    bool ok = false, any_write = false;
    int writers = 0, last_t = -1;
    for (int t = 0; t < kThreads; ++t) {
      auto it = written[t].find(k);
      if (it == written[t].end()) continue;
      ++writers;
      last_t = t;
      any_write = any_write || !it->second.empty();
      for (int iter : it->second) ok = ok || got == row_of(t, iter, k);
    }
    // Only ever found-or-inserted: the (zeros) initializer's row.
    if (!any_write) ok = got == std::vector<float>(dim, 0.0f);
    ASSERT_TRUE(ok) << "key " << k << " holds a row nobody wrote";
    if (k >= 1000000 && writers == 1 && !written[last_t][k].empty()) {
      // A disjoint key: its last write wins (find_or_insert does not write present rows).
      EXPECT_EQ(got, row_of(last_t, written[last_t][k].back(), k)) << "key " << k;
    }
  }
}

}  // namespace
}  // namespace genrec
