// CudaTieredTable against a row model (key -> values, state, score, stamp) under random batches
// with duplicates (with and without a cold tier below a bounded host), against the CPU
// TieredTable where the two coincide (a one-bucket hot tier), and on a batch whose keys overflow
// a hot bucket. After every batch: each key is in exactly one tier, the tiers together hold
// exactly the model's rows, and the statistics add up.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/cuda/stream.h"
#include "core/error.h"
#include "core/philox.h"
#include "cuda_test_util.h"
#include "embedding/cuda/cuda_tiered_table.h"
#include "embedding/tiered_table.h"

namespace genrec {
namespace {

using cuda::CudaTableOptions;
using cuda::CudaTieredTable;
using test::DeviceArray;
using test::poisoned;
using test::upload_raw;

struct Row {
  std::vector<float> value, state;
  uint64_t score = 0;
  uint64_t stamp = 0;
};
using RowModel = std::unordered_map<uint64_t, Row>;

struct Tiers {
  CudaTableOptions hot;
  TableOptions host;
};

Tiers make_tiers(int64_t dim, OptimizerState optimizer, EvictionPolicy policy, int64_t slots) {
  Tiers t;
  t.hot.dim = dim;
  t.hot.optimizer = optimizer;
  t.hot.initial_state = 0.25f;
  t.hot.initializer = {InitKind::kUniform, 0.5f, 21};
  t.hot.capacity = slots;
  t.hot.eviction = policy;
  t.host.dim = dim;
  t.host.optimizer = optimizer;
  t.host.initial_state = t.hot.initial_state;
  t.host.initializer = t.hot.initializer;
  t.host.eviction = policy;
  return t;
}

// A cold tier in memory: the tables' cold path without RocksDB.
class MapColdTier : public ColdTier {
 public:
  void put(const TableRows& rows) override {
    for (int64_t i = 0; i < rows.size(); ++i) {
      TableRows row;
      row.append_row(rows, i);
      ASSERT_TRUE(rows_.emplace(rows.keys[i], row).second) << "key " << rows.keys[i] << " twice";
    }
  }
  TableRows take(const uint64_t* keys, int64_t n) override {
    TableRows out;
    for (int64_t i = 0; i < n; ++i) {
      auto it = rows_.find(keys[i]);
      if (it == rows_.end()) continue;
      out.append(it->second);
      rows_.erase(it);
    }
    return out;
  }
  void find(const uint64_t* keys, int64_t n, float* values_out, uint8_t* found) const override {
    for (int64_t i = 0; i < n; ++i) {
      auto it = rows_.find(keys[i]);
      found[i] = it != rows_.end();
      if (!found[i]) continue;
      const std::vector<float>& v = it->second.values;
      std::copy(v.begin(), v.end(), values_out + i * static_cast<int64_t>(v.size()));
    }
  }
  TableRows export_rows() const override {
    TableRows out;
    for (const auto& [key, row] : rows_) out.append(row);
    return out;
  }
  int64_t size() const override { return static_cast<int64_t>(rows_.size()); }

 private:
  std::map<uint64_t, TableRows> rows_;
};

// Each key in one tier, the union equal to the model, every row (values, state, score, stamp)
// exact.
void expect_tiers_match(CudaTieredTable& t, const RowModel& model, cudaStream_t stream) {
  const TableRows hot = t.hot().export_rows(0, stream), host = t.host().export_rows();
  const TableRows cold = t.cold() != nullptr ? t.cold()->export_rows() : TableRows{};
  std::set<uint64_t> above(hot.keys.begin(), hot.keys.end());
  for (uint64_t k : host.keys) ASSERT_TRUE(above.insert(k).second) << "key " << k << " twice";
  for (uint64_t k : cold.keys) ASSERT_TRUE(above.insert(k).second) << "key " << k << " twice";
  const TableRows all = t.export_rows(stream);
  ASSERT_EQ(all.size(), static_cast<int64_t>(model.size()));
  ASSERT_EQ(t.size(stream), all.size());
  const int64_t dim = t.hot().dim(), sd = t.hot().state_dim();
  for (int64_t r = 0; r < all.size(); ++r) {
    if (r > 0) {
      ASSERT_LT(all.keys[r - 1], all.keys[r]);
    }
    auto it = model.find(all.keys[r]);
    ASSERT_NE(it, model.end()) << "unexpected key " << all.keys[r];
    EXPECT_EQ(all.scores[r], it->second.score) << "key " << all.keys[r];
    EXPECT_EQ(all.stamps[r], it->second.stamp) << "key " << all.keys[r];
    for (int64_t j = 0; j < dim; ++j) ASSERT_EQ(all.values[r * dim + j], it->second.value[j]);
    for (int64_t j = 0; j < sd; ++j) ASSERT_EQ(all.states[r * sd + j], it->second.state[j]);
  }
}

// hot holds misses + promoted + fetched - demoted rows, host and cold the demoted rows less the
// promoted and fetched ones, cold the spilled ones less the fetched; every occurrence counted.
void expect_stats_consistent(CudaTieredTable& t, int64_t occurrences, cudaStream_t stream) {
  const TierStats s = t.stats();
  EXPECT_EQ(s.hot_hits + s.host_hits + s.cold_hits + s.misses, occurrences);
  EXPECT_EQ(t.hot().size(stream), s.misses + s.promoted + s.fetched - s.demoted);
  const int64_t cold = t.cold() != nullptr ? t.cold()->size() : 0;
  EXPECT_EQ(t.host().size() + cold, s.demoted - s.promoted - s.fetched);
  EXPECT_EQ(cold, s.spilled - s.fetched);
}

// Random find_or_insert batches (duplicates, hits in every tier, new keys) and read-only finds
// on a hot tier of 8 buckets over 1500 keys, so rows keep moving both ways; with a cold tier,
// below a host of 300 rows. The test rewrites whole rows of the batch in hot (values, state,
// score, stamp) so that moves are visible.
void run_random_batches(bool with_cold) {
  SCOPED_TRACE(with_cold ? "with a cold tier" : "host only");
  const int64_t dim = 8;
  Tiers cfg = make_tiers(dim, OptimizerState::kAdagrad, EvictionPolicy::kLru, 1024);
  if (with_cold) cfg.host.max_capacity = 300;
  CudaTieredTable t(cfg.hot, cfg.host, with_cold ? std::make_unique<MapColdTier>() : nullptr);
  const int64_t sd = t.hot().state_dim();
  ASSERT_EQ(t.hot().capacity(), 1024);
  cuda::Stream stream;
  RowModel model;
  Philox rng(5);
  std::vector<uint64_t> universe(1500);
  for (auto& k : universe) k = rng.next_u64() >> 1;
  int64_t occurrences = 0;
  for (int round = 1; round <= 60; ++round) {
    SCOPED_TRACE(testing::Message() << "round " << round);
    t.set_step(round);
    const int64_t n = 1 + static_cast<int64_t>(rng.below(400));
    std::vector<uint64_t> keys(n);
    for (int64_t i = 0; i < n; ++i) {
      keys[i] = i > 0 && rng.below(5) == 0 ? keys[rng.below(i)] : universe[rng.below(1500)];
    }
    auto d_keys = upload_raw(keys);
    if (round % 4 == 0) {  // read-only: nothing moves, nothing is counted
      const int64_t hot_before = t.hot().size(stream);
      const TierStats before = t.stats();
      auto d_out = poisoned<float>(n * dim);
      auto d_found = poisoned<uint8_t>(n);
      t.find(d_keys.get(), n, d_out.get(), d_found.get(), stream);
      auto out = d_out.download_raw();
      auto found = d_found.download_raw();
      for (int64_t i = 0; i < n; ++i) {
        auto it = model.find(keys[i]);
        ASSERT_EQ(found[i], it != model.end() ? 1 : 0) << i;
        if (it == model.end()) continue;
        for (int64_t j = 0; j < dim; ++j) ASSERT_EQ(out[i * dim + j], it->second.value[j]) << i;
      }
      EXPECT_EQ(t.hot().size(stream), hot_before);
      EXPECT_EQ(t.stats().hot_hits, before.hot_hits);
      expect_tiers_match(t, model, stream);
      continue;
    }
    auto d_out = poisoned<float>(n * dim);
    auto d_stored = poisoned<uint8_t>(n);
    t.find_or_insert(d_keys.get(), n, d_out.get(), d_stored.get(), stream);
    occurrences += n;
    auto out = d_out.download_raw();
    auto stored = d_stored.download_raw();
    for (int64_t i = 0; i < n; ++i) {
      auto it = model.find(keys[i]);
      if (it == model.end()) {
        Row r;
        r.value.resize(dim);
        cfg.hot.initializer.fill(keys[i], r.value.data(), dim);
        r.state.assign(sd, cfg.hot.initial_state);
        r.stamp = round;
        it = model.emplace(keys[i], r).first;
      }
      it->second.score = round;  // LRU: the step of the last access
      ASSERT_EQ(stored[i], 1) << i;
      for (int64_t j = 0; j < dim; ++j) ASSERT_EQ(out[i * dim + j], it->second.value[j]) << i;
    }
    // Every key of the batch is in hot now.
    auto d_in_hot = poisoned<uint8_t>(n);
    t.hot().contains(d_keys.get(), n, d_in_hot.get(), stream);
    for (uint8_t f : d_in_hot.download_raw()) ASSERT_EQ(f, 1);
    // New whole rows for half of the batch's distinct keys, written in hot.
    std::vector<uint64_t> distinct(keys.begin(), keys.end());
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    distinct.resize((distinct.size() + 1) / 2);
    const int64_t w = static_cast<int64_t>(distinct.size());
    std::vector<float> values(w * dim), states(w * sd);
    std::vector<uint64_t> scores(w), stamps(w);
    for (auto& v : values) v = rng.uniform();
    for (auto& v : states) v = rng.uniform();
    for (auto& s : scores) s = rng.below(round + 1);
    for (auto& s : stamps) s = 100 + rng.below(1000);
    auto d_w = upload_raw(distinct);
    auto d_values = upload_raw(values);
    auto d_states = upload_raw(states);
    auto d_scores = upload_raw(scores);
    auto d_stamps = upload_raw(stamps);
    t.hot().insert_rows(d_w.get(), d_values.get(), d_states.get(), d_scores.get(), w, stream,
                        nullptr, nullptr, nullptr, 0, d_stamps.get());
    for (int64_t r = 0; r < w; ++r) {
      Row& row = model[distinct[r]];
      row.value.assign(values.begin() + r * dim, values.begin() + (r + 1) * dim);
      row.state.assign(states.begin() + r * sd, states.begin() + (r + 1) * sd);
      row.score = scores[r];
      row.stamp = stamps[r];
    }
    expect_tiers_match(t, model, stream);
    expect_stats_consistent(t, occurrences, stream);
    EXPECT_EQ(t.stats().promoted, t.stats().host_hits);
    EXPECT_EQ(t.stats().fetched, t.stats().cold_hits);
    if (with_cold) {
      EXPECT_LE(t.host().size(), 300);
    }
  }
  const TierStats s = t.stats();
  EXPECT_GT(s.host_hits, with_cold ? 20 : 100) << "rows came back from host";
  EXPECT_GT(s.demoted, 500) << "hot evicted rows to host";
  EXPECT_GT(t.host().size(), 0);
  if (with_cold) {
    EXPECT_GT(s.cold_hits, 20) << "rows came back from cold";
    EXPECT_GT(t.cold()->size(), 0);
  }
}

TEST(CudaTieredTable, RandomBatchesMatchRowModel) {
  GENREC_REQUIRE_CUDA();
  run_random_batches(false);
  run_random_batches(true);
}

// A one-bucket hot tier (128 slots) evicts exactly as the CPU TieredTable with a hot tier of
// 128 rows: same values, flags, statistics, and the same rows (stamps included) in each tier.
void run_against_cpu(EvictionPolicy policy) {
  SCOPED_TRACE(eviction_policy_name(policy));
  const int64_t dim = 4;
  Tiers cfg = make_tiers(dim, OptimizerState::kAdam, policy, 128);
  CudaTieredTable gpu(cfg.hot, cfg.host);
  ASSERT_EQ(gpu.hot().capacity(), 128);
  TableOptions cpu_hot = cfg.host;
  cpu_hot.max_capacity = 128;
  cpu_hot.num_shards = 1;
  TieredTable cpu(cpu_hot, cfg.host);
  cuda::Stream stream;
  Philox rng(static_cast<uint64_t>(policy) + 40);
  std::vector<uint64_t> universe(400);
  for (size_t k = 0; k < universe.size(); ++k) universe[k] = 7 + 13 * k;
  for (int round = 1; round <= 30; ++round) {
    SCOPED_TRACE(testing::Message() << "round " << round);
    gpu.set_step(round);
    cpu.set_step(round);
    gpu.set_epoch(round / 8);
    cpu.set_epoch(round / 8);
    // At most 100 distinct keys (they must fit the hot tier), duplicates included.
    std::vector<uint64_t> distinct;
    std::set<uint64_t> seen;
    const int64_t want = 1 + static_cast<int64_t>(rng.below(100));
    while (static_cast<int64_t>(distinct.size()) < want) {
      const uint64_t k = universe[rng.below(universe.size())];
      if (seen.insert(k).second) distinct.push_back(k);
    }
    std::vector<uint64_t> keys = distinct;
    for (int i = 0; i < 30; ++i) {
      keys.insert(keys.begin() + rng.below(keys.size() + 1), distinct[rng.below(want)]);
    }
    const int64_t n = static_cast<int64_t>(keys.size());
    auto d_keys = upload_raw(keys);
    auto d_out = poisoned<float>(n * dim);
    auto d_stored = poisoned<uint8_t>(n);
    gpu.find_or_insert(d_keys.get(), n, d_out.get(), d_stored.get(), stream);
    std::vector<float> cpu_out(n * dim);
    std::vector<uint8_t> cpu_stored(n);
    cpu.find_or_insert(keys.data(), n, cpu_out.data(), cpu_stored.data());
    ASSERT_EQ(d_out.download_raw(), cpu_out);
    ASSERT_EQ(d_stored.download_raw(), cpu_stored);
    const TierStats g = gpu.stats(), c = cpu.stats();
    EXPECT_EQ(g.hot_hits, c.hot_hits);
    EXPECT_EQ(g.host_hits, c.host_hits);
    EXPECT_EQ(g.misses, c.misses);
    EXPECT_EQ(g.promoted, c.promoted);
    EXPECT_EQ(g.demoted, c.demoted);
    const TableRows gh = gpu.hot().export_rows(0, stream), ch = cpu.hot().export_rows();
    EXPECT_EQ(gh.keys, ch.keys);
    EXPECT_EQ(gh.values, ch.values);
    EXPECT_EQ(gh.states, ch.states);
    EXPECT_EQ(gh.scores, ch.scores);
    EXPECT_EQ(gh.stamps, ch.stamps);
    const TableRows gl = gpu.host().export_rows(), cl = cpu.host().export_rows();
    EXPECT_EQ(gl.keys, cl.keys);
    EXPECT_EQ(gl.values, cl.values);
    EXPECT_EQ(gl.states, cl.states);
    EXPECT_EQ(gl.scores, cl.scores);
    EXPECT_EQ(gl.stamps, cl.stamps);
  }
  EXPECT_GT(gpu.stats().host_hits, 0);
}

TEST(CudaTieredTable, AgreesWithCpuTieredTable) {
  GENREC_REQUIRE_CUDA();
  for (auto p : {EvictionPolicy::kLru, EvictionPolicy::kLfu, EvictionPolicy::kEpochLfu}) {
    run_against_cpu(p);
  }
}

// A batch with more distinct keys for one hot bucket than it has slots: the host rows that do
// not fit stay in host (their occurrences still get them, stored = 0), new keys that do not fit
// are in no tier; nothing is lost or duplicated.
TEST(CudaTieredTable, OverflowingBucketKeepsHostRows) {
  GENREC_REQUIRE_CUDA();
  const int64_t dim = 4;
  Tiers cfg = make_tiers(dim, OptimizerState::kNone, EvictionPolicy::kLru, 128);
  CudaTieredTable t(cfg.hot, cfg.host);
  cuda::Stream stream;
  auto lookup = [&](const std::vector<uint64_t>& keys, std::vector<uint8_t>* stored) {
    const int64_t n = static_cast<int64_t>(keys.size());
    auto d_keys = upload_raw(keys);
    auto d_out = poisoned<float>(n * dim);
    auto d_stored = poisoned<uint8_t>(n);
    t.find_or_insert(d_keys.get(), n, d_out.get(), d_stored.get(), stream);
    *stored = d_stored.download_raw();
    return d_out.download_raw();
  };
  std::vector<uint64_t> a(128), b(128);
  for (int i = 0; i < 128; ++i) {
    a[i] = 1000 + i;
    b[i] = 5000 + i;
  }
  std::vector<uint8_t> stored;
  t.set_step(1);
  lookup(a, &stored);
  // Give a's rows values of their own, then push them all down to host with b.
  std::vector<float> a_values(128 * dim);
  for (int i = 0; i < 128 * dim; ++i) a_values[i] = static_cast<float>(i);
  auto d_a = upload_raw(a);
  auto d_a_values = upload_raw(a_values);
  t.hot().assign(d_a.get(), d_a_values.get(), 128, stream);
  t.set_step(2);
  lookup(b, &stored);
  ASSERT_EQ(t.host().size(), 128);
  ASSERT_EQ(t.stats().demoted, 128);
  // All of b (hits, pinned), 10 of a (in host), a new key, kEmptyKey.
  std::vector<uint64_t> c = b;
  for (int i = 0; i < 10; ++i) c.push_back(a[i * 3]);
  c.push_back(99999);
  c.push_back(kEmptyKey);
  c.push_back(a[0]);
  t.set_step(3);
  t.reset_stats();
  const auto out = lookup(c, &stored);
  for (int i = 0; i < 128; ++i) ASSERT_EQ(stored[i], 1);
  for (int i = 128; i < 141; ++i) ASSERT_EQ(stored[i], 0) << i;
  for (int i = 0; i < 10; ++i) {
    for (int j = 0; j < dim; ++j) ASSERT_EQ(out[(128 + i) * dim + j], a_values[i * 3 * dim + j]);
  }
  for (int j = 0; j < dim; ++j) ASSERT_EQ(out[140 * dim + j], a_values[j]);
  std::vector<float> init(dim);
  cfg.hot.initializer.fill(99999, init.data(), dim);
  for (int j = 0; j < dim; ++j) ASSERT_EQ(out[138 * dim + j], init[j]);
  const TierStats s = t.stats();
  EXPECT_EQ(s.hot_hits, 128 + 1);  // b, and the repeated a[0]
  EXPECT_EQ(s.host_hits, 10);
  EXPECT_EQ(s.promoted, 0);
  EXPECT_EQ(s.misses, 2);  // 99999 and kEmptyKey
  EXPECT_EQ(s.demoted, 0);
  EXPECT_EQ(t.hot().size(stream), 128);
  EXPECT_EQ(t.host().size(), 128);
  const TableRows host = t.host().export_rows();
  EXPECT_EQ(host.keys, a);
  EXPECT_EQ(host.values, a_values);
}

// A row's stamp is the step of its last write wherever the row goes: demoted to host by a later
// batch and promoted back by another, it keeps it (lookups are no writes).
TEST(CudaTieredTable, StampsSurvivePromotionAndDemotion) {
  GENREC_REQUIRE_CUDA();
  const int64_t dim = 4;
  Tiers cfg = make_tiers(dim, OptimizerState::kAdagrad, EvictionPolicy::kLru, 128);
  CudaTieredTable t(cfg.hot, cfg.host);
  cuda::Stream stream;
  auto lookup = [&](const std::vector<uint64_t>& keys) {
    const int64_t n = static_cast<int64_t>(keys.size());
    auto d_keys = upload_raw(keys);
    auto d_out = poisoned<float>(n * dim);
    auto d_stored = poisoned<uint8_t>(n);
    t.find_or_insert(d_keys.get(), n, d_out.get(), d_stored.get(), stream);
    for (uint8_t s : d_stored.download_raw()) ASSERT_EQ(s, 1);
  };
  auto stamps_of = [](const TableRows& rows) {
    std::map<uint64_t, uint64_t> m;
    for (int64_t r = 0; r < rows.size(); ++r) m[rows.keys[r]] = rows.stamps[r];
    return m;
  };
  std::vector<uint64_t> a(128), b(128), odd;
  for (int i = 0; i < 128; ++i) {
    a[i] = 1000 + i;
    b[i] = 5000 + i;
    if (i % 2 == 1) odd.push_back(a[i]);
  }
  std::map<uint64_t, uint64_t> want_a;  // a: new at step 1, the odd half written at step 2
  for (int i = 0; i < 128; ++i) want_a[a[i]] = i % 2 == 1 ? 2 : 1;
  t.set_step(1);
  lookup(a);
  t.set_step(2);
  auto d_odd = upload_raw(odd);
  auto d_odd_values = upload_raw(std::vector<float>(odd.size() * dim, 3.0f));
  t.hot().assign(d_odd.get(), d_odd_values.get(), static_cast<int64_t>(odd.size()), stream);
  EXPECT_EQ(stamps_of(t.hot().export_rows(0, stream)), want_a);
  // b (new at step 3) demotes all of a.
  t.set_step(3);
  lookup(b);
  ASSERT_EQ(t.stats().demoted, 128);
  EXPECT_EQ(stamps_of(t.host().export_rows()), want_a);
  // a (step 4) comes back and demotes b: no stamp changes.
  t.set_step(4);
  lookup(a);
  ASSERT_EQ(t.stats().promoted, 128);
  EXPECT_EQ(stamps_of(t.hot().export_rows(0, stream)), want_a);
  std::map<uint64_t, uint64_t> want_b;
  for (uint64_t k : b) want_b[k] = 3;
  EXPECT_EQ(stamps_of(t.host().export_rows()), want_b);
  want_b.insert(want_a.begin(), want_a.end());
  EXPECT_EQ(stamps_of(t.export_rows(stream)), want_b);
}

TEST(CudaTieredTable, EmptyBatchesAndRefusedTiers) {
  auto expect_refused = [](const Tiers& cfg, const std::string& what, bool cold = false) {
    try {
      CudaTieredTable t(cfg.hot, cfg.host, cold ? std::make_unique<MapColdTier>() : nullptr);
      ADD_FAILURE() << "accepted: " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  const Tiers ok = make_tiers(4, OptimizerState::kAdam, EvictionPolicy::kLru, 128);
  Tiers bad = ok;
  bad.host.dim = 5;
  expect_refused(bad, "tiers differ");
  bad = ok;
  bad.host.optimizer = OptimizerState::kNone;
  expect_refused(bad, "tiers differ");
  bad = ok;
  bad.hot.eviction = bad.host.eviction = EvictionPolicy::kCustom;
  expect_refused(bad, "eviction policy");
  bad = ok;
  bad.host.eviction = EvictionPolicy::kLfu;
  expect_refused(bad, "eviction policy");
  bad = ok;
  bad.hot.max_hbm_row_bytes = 1 << 20;
  expect_refused(bad, "every row in HBM");
  expect_refused(ok, "cold tier needs a host tier with a max_capacity", true);
  GENREC_REQUIRE_CUDA();
  CudaTieredTable t(ok.hot, ok.host);
  cuda::Stream stream;
  t.find_or_insert(nullptr, 0, nullptr, nullptr, stream);
  t.find(nullptr, 0, nullptr, nullptr, stream);
  EXPECT_EQ(t.size(stream), 0);
  EXPECT_EQ(t.stats().misses, 0);
  auto d_keys = upload_raw(std::vector<uint64_t>{3});
  auto d_out = poisoned<float>(4);
  EXPECT_THROW(t.find_or_insert(d_keys.get(), -1, d_out.get(), nullptr, stream), Error);
  EXPECT_THROW(t.find(d_keys.get(), 1, d_out.get(), nullptr, stream), Error);
}

}  // namespace
}  // namespace genrec
