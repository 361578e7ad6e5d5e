// CudaDynamicTable against a std::unordered_map model (keys, values, states, scores, stamps)
// under random batches with duplicates, and against the CPU DynamicTable where the two coincide
// (the same random batches on an unbounded table, eviction order in a one-bucket table, initial
// rows), and its removal log against the removals the calls report. Every output is poisoned (all
// bytes 0xFF: NaN rows, flag 255) before each call, so an unwritten output fails.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>
#include <set>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "core/cuda/stream.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/philox.h"
#include "cuda_test_util.h"
#include "embedding/cuda/cuda_dynamic_table.h"
#include "embedding/dynamic_table.h"

namespace genrec {
namespace {

using cuda::CudaDynamicTable;
using cuda::CudaTableOptions;
using test::DeviceArray;
using test::poisoned;
using test::upload_raw;

bool is_poison(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits == 0xFFFFFFFFu;
}

struct ModelRow {
  std::vector<float> value, state;
  uint64_t score = 0;
  uint64_t stamp = 0;  // the step of the last write
};

// The CPU table's documented semantics, one key at a time in batch order, without eviction.
struct Model {
  int64_t dim = 0, state_dim = 0;
  float state0 = 0.0f;
  Initializer init;
  EvictionPolicy policy = EvictionPolicy::kLru;
  uint64_t step = 0, epoch = 0;
  std::unordered_map<uint64_t, ModelRow> rows;

  uint64_t score(bool is_new, uint64_t old, uint64_t custom) const {
    return score_after_access(policy, is_new, old, step, epoch, custom);
  }
  ModelRow& insert(uint64_t key, uint64_t custom) {
    ModelRow r;
    r.value.resize(dim);
    init.fill(key, r.value.data(), dim);
    r.state.assign(state_dim, state0);
    r.score = score(true, 0, custom);
    r.stamp = step;
    return rows.emplace(key, r).first->second;
  }
};

// A one-bucket table (128 slots) whose new rows are uniform in [-1, 1) (initializer seed).
CudaTableOptions one_bucket(int64_t dim, uint64_t seed) {
  CudaTableOptions opt;
  opt.dim = dim;
  opt.initializer = {InitKind::kUniform, 1.0f, seed};
  opt.capacity = 128;
  return opt;
}

// The max_hbm_row_bytes that keeps the rows of the lowest device_slots slots of each of `buckets`
// buckets in device memory (rows of row_dim floats, padded to 4 as the table pads them).
int64_t device_row_budget(int64_t buckets, int64_t device_slots, int64_t row_dim) {
  return buckets * device_slots * ((row_dim + 3) / 4 * 4) * static_cast<int64_t>(sizeof(float));
}

// Inserts keys first .. first + count - 1 with rows of ones at step 1 and returns them.
std::vector<uint64_t> insert_old_rows(CudaDynamicTable& table, int count, uint64_t first,
                                      cudaStream_t stream) {
  std::vector<uint64_t> keys(count);
  std::iota(keys.begin(), keys.end(), first);
  auto d_keys = upload_raw(keys);
  auto d_values = upload_raw(std::vector<float>(count * table.dim(), 1.0f));
  table.set_step(1);
  table.insert_or_assign(d_keys.get(), d_values.get(), count, stream);
  return keys;
}

// find_or_insert of `keys` into poisoned outputs, with the evicted keys collected.
struct FindOrInsertResult {
  std::vector<uint8_t> stored;
  std::vector<float> out;
  std::vector<uint64_t> evicted;
};
FindOrInsertResult find_or_insert_evicting(CudaDynamicTable& table,
                                           const std::vector<uint64_t>& keys, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(keys.size());
  auto d_keys = upload_raw(keys);
  auto d_out = poisoned<float>(n * table.dim());
  auto d_stored = poisoned<uint8_t>(n);
  DeviceArray<uint64_t> ev_keys(n);
  auto ev_count = upload_raw(std::vector<int64_t>{0});
  cuda::EvictedRows ev{ev_keys.get(), nullptr, nullptr, ev_count.get()};
  table.find_or_insert(d_keys.get(), n, d_out.get(), d_stored.get(), stream, nullptr, &ev);
  FindOrInsertResult r{d_stored.download_raw(), d_out.download_raw(), ev_keys.download_raw()};
  r.evicted.resize(ev_count.download_raw()[0]);
  return r;
}

// Where a call writes the keys it evicts (an EvictedRows of keys only).
class EvictedKeys {
 public:
  explicit EvictedKeys(int64_t n) : keys_(n), count_(upload_raw(std::vector<int64_t>{0})) {
    rows_.keys = keys_.get();
    rows_.count = count_.get();
  }
  const cuda::EvictedRows* rows() const { return &rows_; }
  std::vector<uint64_t> keys() const {
    std::vector<uint64_t> k = keys_.download_raw();
    k.resize(count_.download_raw()[0]);
    return k;
  }

 private:
  DeviceArray<uint64_t> keys_;
  DeviceArray<int64_t> count_;
  cuda::EvictedRows rows_;
};

struct Config {
  int64_t dim = 8;
  OptimizerState optimizer = OptimizerState::kNone;
  EvictionPolicy policy = EvictionPolicy::kLru;
  bool host_rows = false;
};

std::vector<uint64_t> custom_scores(const std::vector<uint64_t>& keys, bool custom, Philox& rng) {
  if (!custom) return {};
  std::vector<uint64_t> s(keys.size());
  for (auto& x : s) x = rng.below(1000);
  return s;
}

void expect_rows_equal(const TableRows& got, const Model& m) {
  ASSERT_EQ(got.size(), static_cast<int64_t>(m.rows.size()));
  for (int64_t r = 0; r < got.size(); ++r) {
    const uint64_t key = got.keys[r];
    auto it = m.rows.find(key);
    ASSERT_NE(it, m.rows.end()) << "unexpected key " << key;
    EXPECT_EQ(got.scores[r], it->second.score) << "key " << key;
    EXPECT_EQ(got.stamps[r], it->second.stamp) << "key " << key;
    for (int64_t j = 0; j < m.dim; ++j) {
      ASSERT_EQ(got.values[r * m.dim + j], it->second.value[j]) << "key " << key << " j " << j;
    }
    for (int64_t j = 0; j < m.state_dim; ++j) {
      ASSERT_EQ(got.states[r * m.state_dim + j], it->second.state[j]) << "key " << key;
    }
  }
}

// Whole rows equal: keys, values, states, scores and stamps.
void expect_same_rows(const TableRows& g, const TableRows& c) {
  ASSERT_EQ(g.keys, c.keys);
  EXPECT_EQ(g.values, c.values);
  EXPECT_EQ(g.states, c.states);
  EXPECT_EQ(g.scores, c.scores);
  EXPECT_EQ(g.stamps, c.stamps);
}

// Random batches of every operation (duplicates included) on a table large enough that no
// bucket fills, checked call by call against the model and by full exports against the model and
// against the CPU table given the same calls.
void run_random_ops(const Config& cfg) {
  CudaTableOptions opt;
  opt.dim = cfg.dim;
  opt.optimizer = cfg.optimizer;
  opt.initial_state = 0.25f;
  opt.initializer = {InitKind::kUniform, 0.5f, 11};
  opt.capacity = 16384;
  opt.eviction = cfg.policy;
  // Host rows: device rows for the lowest 8 slots of each of the 128 buckets, so about half of
  // the universe's ~16 keys per bucket live in host memory.
  if (cfg.host_rows) {
    opt.max_hbm_row_bytes =
        device_row_budget(128, 8, cfg.dim + optimizer_state_dim(cfg.optimizer, cfg.dim));
  }
  CudaDynamicTable table(opt);
  if (cfg.host_rows) {
    ASSERT_EQ(table.host_slots(), 128 * 120);
  }
  Model m;
  m.dim = cfg.dim;
  m.state_dim = table.state_dim();
  m.state0 = cfg.optimizer == OptimizerState::kAdagrad ? opt.initial_state : 0.0f;
  m.init = opt.initializer;
  m.policy = cfg.policy;
  TableOptions copt;
  copt.dim = cfg.dim;
  copt.optimizer = cfg.optimizer;
  copt.initial_state = opt.initial_state;
  copt.initializer = opt.initializer;
  copt.eviction = cfg.policy;
  DynamicTable cpu(copt);
  const bool custom = cfg.policy == EvictionPolicy::kCustom;
  const int64_t dim = cfg.dim;
  cuda::Stream stream;

  Philox rng(cfg.dim * 31 + static_cast<int>(cfg.policy));
  std::vector<uint64_t> universe(2000);
  for (auto& k : universe) k = rng.next_u64() >> 1;
  for (int round = 0; round < 60; ++round) {
    SCOPED_TRACE(testing::Message() << "round " << round);
    m.step = round + 1;
    table.set_step(m.step);
    cpu.set_step(m.step);
    if (round % 20 == 0) {
      table.set_epoch(m.epoch = round / 20);
      cpu.set_epoch(m.epoch);
    }
    const int64_t n = 1 + static_cast<int64_t>(rng.below(700));
    std::vector<uint64_t> keys(n);
    for (int64_t i = 0; i < n; ++i) {
      // One in five repeats an earlier key of the batch.
      keys[i] = i > 0 && rng.below(5) == 0 ? keys[rng.below(i)] : universe[rng.below(2000)];
    }
    const auto scores = custom_scores(keys, custom, rng);
    std::vector<float> values(n * dim);
    for (auto& v : values) v = rng.uniform();
    auto d_keys = upload_raw(keys);
    auto d_scores = upload_raw(scores);
    const uint64_t* sc = custom ? d_scores.get() : nullptr;
    const uint64_t* cpu_sc = custom ? scores.data() : nullptr;
    std::vector<float> cpu_out(n * dim);
    const int op = static_cast<int>(rng.below(5));
    if (op == 0) {  // find_or_insert
      auto d_out = poisoned<float>(n * dim);
      auto d_stored = poisoned<uint8_t>(n);
      table.find_or_insert(d_keys.get(), n, d_out.get(), d_stored.get(), stream, sc);
      cpu.find_or_insert(keys.data(), n, cpu_out.data(), nullptr, cpu_sc);
      auto out = d_out.download_raw();
      auto stored = d_stored.download_raw();
      ASSERT_EQ(out, cpu_out);
      for (int64_t i = 0; i < n; ++i) {
        auto it = m.rows.find(keys[i]);
        if (it == m.rows.end()) {
          m.insert(keys[i], custom ? scores[i] : 0);
        } else {
          it->second.score = m.score(false, it->second.score, custom ? scores[i] : 0);
        }
        ASSERT_EQ(stored[i], 1) << i;
        const auto& v = m.rows[keys[i]].value;
        for (int64_t j = 0; j < dim; ++j) ASSERT_EQ(out[i * dim + j], v[j]) << i << " " << j;
      }
    } else if (op == 1 || op == 2) {  // insert_or_assign, assign
      auto d_values = upload_raw(values);
      auto d_flags = poisoned<uint8_t>(n);
      if (op == 1) {
        table.insert_or_assign(d_keys.get(), d_values.get(), n, stream, d_flags.get(), sc);
        cpu.insert_or_assign(keys.data(), values.data(), n, cpu_sc);
      } else {
        table.assign(d_keys.get(), d_values.get(), n, stream, d_flags.get(), sc);
        cpu.assign(keys.data(), values.data(), n, cpu_sc);
      }
      auto flags = d_flags.download_raw();
      for (int64_t i = 0; i < n; ++i) {
        auto it = m.rows.find(keys[i]);
        const bool present = it != m.rows.end();
        ASSERT_EQ(flags[i], op == 1 || present ? 1 : 0) << i;
        if (!present && op == 2) continue;
        ModelRow& r = present ? it->second : m.insert(keys[i], custom ? scores[i] : 0);
        if (present) r.score = m.score(false, r.score, custom ? scores[i] : 0);
        r.value.assign(values.begin() + i * dim, values.begin() + (i + 1) * dim);
        r.stamp = m.step;
      }
    } else if (op == 3) {  // erase
      auto d_erased = poisoned<uint8_t>(n);
      table.erase(d_keys.get(), n, stream, d_erased.get());
      cpu.erase(keys.data(), n);
      auto erased = d_erased.download_raw();
      std::map<uint64_t, int> count;
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_LE(erased[i], 1);
        count[keys[i]] += erased[i];
      }
      for (auto [key, c] : count) ASSERT_EQ(c, static_cast<int>(m.rows.erase(key))) << key;
    } else {  // find
      auto d_out = poisoned<float>(n * dim);
      auto d_found = poisoned<uint8_t>(n);
      auto d_states = poisoned<float>(n * std::max<int64_t>(1, m.state_dim));
      auto d_sc = poisoned<uint64_t>(n);
      auto d_stamps = poisoned<uint64_t>(n);
      table.find(d_keys.get(), n, d_out.get(), d_found.get(), stream, d_states.get(), d_sc.get(),
                 d_stamps.get());
      std::vector<uint8_t> cpu_found(n);
      std::vector<uint64_t> cpu_stamps(n);
      cpu.find(keys.data(), n, cpu_out.data(), cpu_found.data(), nullptr, nullptr,
               cpu_stamps.data());
      auto out = d_out.download_raw();
      auto found = d_found.download_raw();
      auto states = d_states.download_raw();
      auto got_scores = d_sc.download_raw();
      auto got_stamps = d_stamps.download_raw();
      for (int64_t i = 0; i < n; ++i) {
        auto it = m.rows.find(keys[i]);
        ASSERT_EQ(found[i], it != m.rows.end() ? 1 : 0) << i;
        ASSERT_EQ(found[i], cpu_found[i]) << i;
        if (it == m.rows.end()) {
          for (int64_t j = 0; j < dim; ++j) ASSERT_TRUE(is_poison(out[i * dim + j]));
          continue;
        }
        ASSERT_EQ(got_scores[i], it->second.score) << i;
        ASSERT_EQ(got_stamps[i], it->second.stamp) << i;
        ASSERT_EQ(got_stamps[i], cpu_stamps[i]) << i;
        for (int64_t j = 0; j < dim; ++j) ASSERT_EQ(out[i * dim + j], it->second.value[j]);
        for (int64_t j = 0; j < m.state_dim; ++j) {
          ASSERT_EQ(states[i * m.state_dim + j], it->second.state[j]);
        }
      }
    }
    if (round % 10 == 9) {
      ASSERT_EQ(table.size(stream), static_cast<int64_t>(m.rows.size()));
      const TableRows rows = table.export_rows(0, stream);
      expect_rows_equal(rows, m);
      expect_same_rows(rows, cpu.export_rows());
    }
  }
}

TEST(CudaDynamicTable, RandomOpsMatchModelLru) {
  GENREC_REQUIRE_CUDA();
  run_random_ops({8, OptimizerState::kNone, EvictionPolicy::kLru, false});
}

TEST(CudaDynamicTable, RandomOpsMatchModelLfuOddDim) {
  GENREC_REQUIRE_CUDA();
  run_random_ops({5, OptimizerState::kNone, EvictionPolicy::kLfu, false});
}

TEST(CudaDynamicTable, RandomOpsMatchModelEpochLfuAdagrad) {
  GENREC_REQUIRE_CUDA();
  run_random_ops({64, OptimizerState::kAdagrad, EvictionPolicy::kEpochLfu, false});
}

TEST(CudaDynamicTable, RandomOpsMatchModelCustomAdam) {
  GENREC_REQUIRE_CUDA();
  run_random_ops({12, OptimizerState::kAdam, EvictionPolicy::kCustom, false});
}

TEST(CudaDynamicTable, RandomOpsMatchModelEpochLruHostRows) {
  GENREC_REQUIRE_CUDA();
  run_random_ops({32, OptimizerState::kNone, EvictionPolicy::kEpochLru, true});
}

// New keys' host rows are written after the kernels (kNewHostRow), their optimizer state too.
TEST(CudaDynamicTable, RandomOpsMatchModelAdagradHostRows) {
  GENREC_REQUIRE_CUDA();
  run_random_ops({16, OptimizerState::kAdagrad, EvictionPolicy::kLru, true});
}

TEST(CudaDynamicTable, DuplicateKeysInOneBatch) {
  GENREC_REQUIRE_CUDA();
  CudaTableOptions opt;
  opt.dim = 4;
  opt.initializer = {InitKind::kUniform, 1.0f, 3};
  opt.eviction = EvictionPolicy::kLfu;
  CudaDynamicTable table(opt);
  cuda::Stream stream;
  // find_or_insert: key 5 is inserted once, every occurrence sees its row, LFU counts 4.
  std::vector<uint64_t> keys = {5, 5, 7, 5, 5};
  auto d_keys = upload_raw(keys);
  auto d_out = poisoned<float>(5 * 4);
  auto d_stored = poisoned<uint8_t>(5);
  table.find_or_insert(d_keys.get(), 5, d_out.get(), d_stored.get(), stream);
  auto out = d_out.download_raw();
  std::vector<float> row5(4);
  opt.initializer.fill(5, row5.data(), 4);
  for (int i : {0, 1, 3, 4}) {
    for (int j = 0; j < 4; ++j) EXPECT_EQ(out[i * 4 + j], row5[j]);
  }
  for (uint8_t s : d_stored.download_raw()) EXPECT_EQ(s, 1);
  EXPECT_EQ(table.size(stream), 2);
  TableRows rows = table.export_rows(0, stream);
  ASSERT_EQ(rows.size(), 2);
  EXPECT_EQ(rows.keys[0], 5u);
  EXPECT_EQ(rows.scores[0], 4u);
  EXPECT_EQ(rows.scores[1], 1u);
  // insert_or_assign and assign keep the last occurrence's value, new or present key alike.
  std::vector<uint64_t> keys2 = {9, 5, 9, 5, 9};
  std::vector<float> values(5 * 4);
  for (int i = 0; i < 5; ++i) std::fill_n(values.begin() + i * 4, 4, static_cast<float>(i + 1));
  auto d_keys2 = upload_raw(keys2);
  auto d_values = upload_raw(values);
  table.insert_or_assign(d_keys2.get(), d_values.get(), 5, stream);
  rows = table.export_rows(0, stream);
  ASSERT_EQ(rows.size(), 3);
  EXPECT_EQ(rows.values[0], 4.0f);  // key 5: occurrence 3
  EXPECT_EQ(rows.values[8], 5.0f);  // key 9: occurrence 4
  EXPECT_EQ(rows.scores[0], 6u);
  EXPECT_EQ(rows.scores[2], 3u);
  std::vector<uint64_t> keys3 = {5, 9, 5, 9, 7};
  auto d_keys3 = upload_raw(keys3);
  auto d_found = poisoned<uint8_t>(5);
  table.assign(d_keys3.get(), d_values.get(), 5, stream, d_found.get());
  EXPECT_EQ(d_found.download_raw(), (std::vector<uint8_t>{1, 1, 1, 1, 1}));
  rows = table.export_rows(0, stream);
  EXPECT_EQ(rows.values[0], 3.0f);  // key 5: occurrence 2
  EXPECT_EQ(rows.values[4], 5.0f);  // key 7: occurrence 4
  EXPECT_EQ(rows.values[8], 4.0f);  // key 9: occurrence 3
  EXPECT_EQ(rows.scores[0], 8u);
}

// Thousands of occurrences of 240 keys packed into two buckets: every tile of a call contends
// for the same two locks, and each key's duplicates race with its insertion.
TEST(CudaDynamicTable, ManyDuplicatesOnTwoBuckets) {
  GENREC_REQUIRE_CUDA();
  const int64_t dim = 8, n = 20000;
  CudaTableOptions opt;
  opt.dim = dim;
  opt.initializer = {InitKind::kUniform, 1.0f, 4};
  opt.capacity = 256;
  opt.eviction = EvictionPolicy::kLfu;
  CudaDynamicTable table(opt);
  ASSERT_EQ(table.capacity(), 256);
  // The table's bucket is mix64(key) & (buckets - 1): 120 keys for each of the two.
  std::vector<uint64_t> distinct;
  int per_bucket[2] = {0, 0};
  for (uint64_t k = 1; distinct.size() < 240; ++k) {
    const int bucket = static_cast<int>(mix64(k) & 1);
    if (per_bucket[bucket] < 120) {
      ++per_bucket[bucket];
      distinct.push_back(k);
    }
  }
  Philox rng(8);
  std::vector<uint64_t> keys(n);
  std::map<uint64_t, int64_t> count, last;
  for (int64_t i = 0; i < n; ++i) {
    keys[i] = distinct[rng.below(distinct.size())];
    ++count[keys[i]];
    last[keys[i]] = i;
  }
  cuda::Stream stream;
  auto d_keys = upload_raw(keys);
  auto d_out = poisoned<float>(n * dim);
  auto d_stored = poisoned<uint8_t>(n);
  table.find_or_insert(d_keys.get(), n, d_out.get(), d_stored.get(), stream);
  auto out = d_out.download_raw();
  for (uint8_t s : d_stored.download_raw()) ASSERT_EQ(s, 1);
  for (int64_t i = 0; i < n; ++i) {
    std::vector<float> init(dim);
    opt.initializer.fill(keys[i], init.data(), dim);
    for (int j = 0; j < dim; ++j) ASSERT_EQ(out[i * dim + j], init[j]) << i;
  }
  ASSERT_EQ(table.size(stream), 240);
  TableRows rows = table.export_rows(0, stream);
  ASSERT_EQ(rows.size(), 240);
  for (int64_t r = 0; r < rows.size(); ++r) {
    ASSERT_EQ(rows.scores[r], static_cast<uint64_t>(count[rows.keys[r]])) << rows.keys[r];
  }
  // insert_or_assign of the same occurrences: each key keeps its last occurrence's row.
  std::vector<float> values(n * dim);
  for (int64_t i = 0; i < n; ++i) std::fill_n(values.begin() + i * dim, dim, static_cast<float>(i));
  auto d_values = upload_raw(values);
  table.insert_or_assign(d_keys.get(), d_values.get(), n, stream);
  rows = table.export_rows(0, stream);
  ASSERT_EQ(rows.size(), 240);
  for (int64_t r = 0; r < rows.size(); ++r) {
    for (int j = 0; j < dim; ++j) {
      ASSERT_EQ(rows.values[r * dim + j], static_cast<float>(last[rows.keys[r]]));
    }
    ASSERT_EQ(rows.scores[r], static_cast<uint64_t>(2 * count[rows.keys[r]]));
  }
}

// insert_or_assign and assign batches where each key occurs dozens of times across many blocks:
// the occurrences race to write one row, the last one's values (and custom score) must win and
// every occurrence counts as one access. Even rounds insert keys of a window that moves by 150
// keys every insert round (new keys, whose duplicates find the row the insert kernel publishes, and
// the newest old ones), odd rounds assign with absent keys. device_slots >= 0: rows in host memory
// past that many slots of each of the 128 buckets (2: a bucket's third key and later ones move its
// older device rows to host; 0: every row is a host row, new ones written after their duplicates'
// writes).
void run_duplicate_writes(int64_t dim, EvictionPolicy policy, int device_slots = -1) {
  SCOPED_TRACE(testing::Message() << "dim " << dim << " " << eviction_policy_name(policy)
                                  << " device slots " << device_slots);
  CudaTableOptions opt;
  opt.dim = dim;
  opt.initializer = {InitKind::kUniform, 1.0f, 21};
  opt.capacity = 1 << 14;
  opt.eviction = policy;
  if (device_slots >= 0) opt.max_hbm_row_bytes = device_row_budget(128, device_slots, dim);
  CudaDynamicTable table(opt);
  if (device_slots >= 0) {
    ASSERT_EQ(table.host_slots(), 128 * (128 - device_slots));
  }
  Model m;
  m.dim = dim;
  m.init = opt.initializer;
  m.policy = policy;
  const bool custom = policy == EvictionPolicy::kCustom;
  cuda::Stream stream;
  Philox rng(static_cast<uint64_t>(dim) * 13 + static_cast<int>(policy));
  std::vector<uint64_t> universe(600);
  for (auto& k : universe) k = rng.next_u64() >> 1;
  const int64_t n = 30000;
  for (int round = 0; round < 6; ++round) {
    SCOPED_TRACE(testing::Message() << "round " << round);
    m.step = round + 1;
    table.set_step(m.step);
    const bool insert = round % 2 == 0;
    const uint64_t first = insert ? 75 * round : 0, count = insert ? 300 : 600;
    std::vector<uint64_t> keys(n);
    for (auto& k : keys) k = universe[first + rng.below(count)];
    const auto scores = custom_scores(keys, custom, rng);
    std::vector<float> values(n * dim);
    for (int64_t x = 0; x < n * dim; ++x) values[x] = static_cast<float>(x + round);
    auto d_keys = upload_raw(keys);
    auto d_values = upload_raw(values);
    auto d_scores = upload_raw(scores);
    auto d_flags = poisoned<uint8_t>(n);
    const uint64_t* sc = custom ? d_scores.get() : nullptr;
    if (insert) {
      table.insert_or_assign(d_keys.get(), d_values.get(), n, stream, d_flags.get(), sc);
    } else {
      table.assign(d_keys.get(), d_values.get(), n, stream, d_flags.get(), sc);
    }
    auto flags = d_flags.download_raw();
    for (int64_t i = 0; i < n; ++i) {
      auto it = m.rows.find(keys[i]);
      const bool present = it != m.rows.end();
      ASSERT_EQ(flags[i], insert || present ? 1 : 0) << i;
      if (!present && !insert) continue;
      ModelRow& r = present ? it->second : m.insert(keys[i], custom ? scores[i] : 0);
      if (present) r.score = m.score(false, r.score, custom ? scores[i] : 0);
      r.value.assign(values.begin() + i * dim, values.begin() + (i + 1) * dim);
      r.stamp = m.step;
    }
    ASSERT_EQ(table.size(stream), static_cast<int64_t>(m.rows.size()));
    expect_rows_equal(table.export_rows(0, stream), m);
  }
}

TEST(CudaDynamicTable, DuplicateWritesLastOccurrenceWins) {
  GENREC_REQUIRE_CUDA();
  run_duplicate_writes(8, EvictionPolicy::kLfu);     // rows held in the lanes (float4)
  run_duplicate_writes(5, EvictionPolicy::kCustom);  // rows copied after the mark
}

TEST(CudaDynamicTable, DuplicateWritesLastOccurrenceWinsInHostRows) {
  GENREC_REQUIRE_CUDA();
  for (int device_slots : {2, 0}) {
    run_duplicate_writes(8, EvictionPolicy::kLfu, device_slots);
    run_duplicate_writes(5, EvictionPolicy::kCustom, device_slots);
  }
}

// insert_or_assign of new keys (each twice) into a full one-bucket table with EvictedRows: the
// evicted rows are the lowest (score, key) ones, and their keys, scores and full rows (values,
// then optimizer state) come out exactly; the new keys keep their last occurrence's values.
// device_slots >= 0: rows past that many slots in host memory, so new keys move device rows to
// host slots, and the next new key may evict a row moved earlier in the call.
void run_insert_and_evict_exact(int device_slots) {
  SCOPED_TRACE(testing::Message() << "device slots " << device_slots);
  const int64_t dim = 6;
  CudaTableOptions opt = one_bucket(dim, 6);
  opt.optimizer = OptimizerState::kAdagrad;
  opt.initial_state = 0.25f;
  if (device_slots >= 0) {
    opt.max_hbm_row_bytes =
        device_row_budget(1, device_slots, dim + optimizer_state_dim(opt.optimizer, dim));
  }
  CudaDynamicTable table(opt);
  if (device_slots >= 0) {
    ASSERT_EQ(table.host_slots(), 128 - device_slots);
  }
  ASSERT_EQ(table.capacity(), 128);
  const int64_t state_dim = table.state_dim(), row_dim = table.row_dim();
  ASSERT_GT(state_dim, 0);
  cuda::Stream stream;
  auto row_values = [&](uint64_t key, int version) {
    std::vector<float> v(dim);
    for (int64_t j = 0; j < dim; ++j) v[j] = static_cast<float>(key * 100 + j) + 0.5f * version;
    return v;
  };
  auto upload_values = [&](const std::vector<uint64_t>& keys, int version) {
    std::vector<float> v;
    for (uint64_t k : keys) {
      auto r = row_values(k, version);
      v.insert(v.end(), r.begin(), r.end());
    }
    return upload_raw(v);
  };
  // 128 rows at step 1, then the odd-indexed half rewritten at step 2.
  std::vector<uint64_t> old_keys(128), odd;
  for (int i = 0; i < 128; ++i) old_keys[i] = 200 + i;
  for (int i = 1; i < 128; i += 2) odd.push_back(old_keys[i]);
  table.set_step(1);
  auto d_old = upload_raw(old_keys);
  auto d_old_values = upload_values(old_keys, 0);
  table.insert_or_assign(d_old.get(), d_old_values.get(), 128, stream);
  table.set_step(2);
  auto d_odd = upload_raw(odd);
  auto d_odd_values = upload_values(odd, 1);
  table.assign(d_odd.get(), d_odd_values.get(), 64, stream);
  // 40 new keys, each twice (version 2, then 3): they evict the 40 lowest keys of step 1.
  table.set_step(3);
  std::vector<uint64_t> keys;
  for (int i = 0; i < 40; ++i) keys.push_back(9000 + i);
  for (int i = 0; i < 40; ++i) keys.push_back(9000 + i);
  const int64_t n = static_cast<int64_t>(keys.size());
  std::vector<float> values;
  for (int64_t i = 0; i < n; ++i) {
    auto r = row_values(keys[i], i < 40 ? 2 : 3);
    values.insert(values.end(), r.begin(), r.end());
  }
  auto d_keys = upload_raw(keys);
  auto d_values = upload_raw(values);
  auto d_stored = poisoned<uint8_t>(n);
  auto ev_keys = poisoned<uint64_t>(n);
  auto ev_scores = poisoned<uint64_t>(n);
  auto ev_rows = poisoned<float>(n * row_dim);
  auto ev_count = upload_raw(std::vector<int64_t>{0});
  cuda::EvictedRows ev{ev_keys.get(), ev_rows.get(), ev_scores.get(), ev_count.get()};
  table.insert_or_assign(d_keys.get(), d_values.get(), n, stream, d_stored.get(), nullptr, &ev);
  for (uint8_t s : d_stored.download_raw()) ASSERT_EQ(s, 1);
  ASSERT_EQ(ev_count.download_raw()[0], 40);
  std::map<uint64_t, std::pair<uint64_t, std::vector<float>>> got, want;
  auto gk = ev_keys.download_raw(), gs = ev_scores.download_raw();
  auto gr = ev_rows.download_raw();
  for (int64_t e = 0; e < 40; ++e) {
    got[gk[e]] = {gs[e],
                  std::vector<float>(gr.begin() + e * row_dim, gr.begin() + (e + 1) * row_dim)};
  }
  for (int i = 0; i < 80; i += 2) {
    std::vector<float> row = row_values(old_keys[i], 0);
    row.resize(row_dim, opt.initial_state);
    want[old_keys[i]] = {1, row};
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(table.size(stream), 128);
  const TableRows rows = table.export_rows(0, stream);
  ASSERT_EQ(rows.size(), 128);
  for (int64_t r = 0; r < rows.size(); ++r) {
    const uint64_t key = rows.keys[r];
    const bool fresh = key >= 9000;
    ASSERT_TRUE(fresh || (key >= 280 && key < 328) || (key - 200) % 2 == 1) << key;
    EXPECT_EQ(rows.scores[r], fresh ? 3u : key % 2 == 1 ? 2u : 1u) << key;
    const auto v = row_values(key, fresh ? 3 : key % 2 == 1 ? 1 : 0);
    for (int64_t j = 0; j < dim; ++j) ASSERT_EQ(rows.values[r * dim + j], v[j]) << key;
    for (int64_t j = 0; j < state_dim; ++j) {
      ASSERT_EQ(rows.states[r * state_dim + j], opt.initial_state) << key;
    }
  }
}

TEST(CudaDynamicTable, InsertAndEvictWritesEvictedRowsExactly) {
  GENREC_REQUIRE_CUDA();
  run_insert_and_evict_exact(-1);
  run_insert_and_evict_exact(64);
}

// A one-bucket table (128 slots) evicts exactly like the CPU table bounded to 128 rows, and the
// evicted rows carry the same scores, stamps and values.
// device_slots >= 0: rows past that many slots in host memory (new keys move device rows there).
void run_eviction_against_cpu(EvictionPolicy policy, int device_slots = -1) {
  SCOPED_TRACE(testing::Message() << eviction_policy_name(policy) << " device slots "
                                  << device_slots);
  const int64_t dim = 4;
  const bool custom = policy == EvictionPolicy::kCustom;
  CudaTableOptions opt = one_bucket(dim, 5);
  opt.eviction = policy;
  if (device_slots >= 0) opt.max_hbm_row_bytes = device_row_budget(1, device_slots, dim);
  CudaDynamicTable gpu(opt);
  ASSERT_EQ(gpu.capacity(), 128);
  TableOptions copt;
  copt.dim = dim;
  copt.initializer = opt.initializer;
  copt.initial_capacity = 256;
  copt.max_capacity = 128;
  copt.num_shards = 1;
  copt.eviction = policy;
  DynamicTable cpu(copt);
  cuda::Stream stream;
  Philox rng(static_cast<int>(policy) + 100);
  std::vector<uint64_t> all;
  for (int round = 0; round < 14; ++round) {
    SCOPED_TRACE(testing::Message() << "round " << round);
    gpu.set_step(round + 1);
    cpu.set_step(round + 1);
    gpu.set_epoch(round / 5);
    cpu.set_epoch(round / 5);
    // 16 new keys, a few old ones (some repeated, for LFU), duplicates of the new ones.
    std::vector<uint64_t> keys;
    for (int i = 0; i < 16; ++i) {
      keys.push_back(1000 + round * 16 + i);
      all.push_back(keys.back());
    }
    for (int i = 0; i < 6 && round > 0; ++i) keys.push_back(all[rng.below(all.size() - 16)]);
    for (int i = 0; i < 4; ++i) keys.push_back(keys[rng.below(keys.size())]);
    const int64_t n = static_cast<int64_t>(keys.size());
    const auto scores = custom_scores(keys, custom, rng);
    auto d_keys = upload_raw(keys);
    auto d_scores = upload_raw(scores);
    auto d_out = poisoned<float>(n * dim);
    auto d_stored = poisoned<uint8_t>(n);
    DeviceArray<uint64_t> ev_keys(n), ev_scores(n);
    auto ev_stamps = poisoned<uint64_t>(n);
    DeviceArray<float> ev_rows(n * dim);
    auto ev_count = upload_raw(std::vector<int64_t>{0});
    cuda::EvictedRows ev{ev_keys.get(), ev_rows.get(), ev_scores.get(), ev_count.get(),
                         ev_stamps.get()};
    gpu.find_or_insert(d_keys.get(), n, d_out.get(), d_stored.get(), stream,
                       custom ? d_scores.get() : nullptr, &ev);
    std::vector<float> cpu_out(n * dim);
    std::vector<uint8_t> cpu_stored(n);
    TableRows cpu_evicted;
    cpu.find_or_insert(keys.data(), n, cpu_out.data(), cpu_stored.data(),
                       custom ? scores.data() : nullptr, &cpu_evicted);
    EXPECT_EQ(d_out.download_raw(), cpu_out);
    EXPECT_EQ(d_stored.download_raw(), cpu_stored);
    const int64_t evicted = ev_count.download_raw()[0];
    ASSERT_EQ(evicted, cpu_evicted.size());
    std::map<uint64_t, std::tuple<uint64_t, uint64_t, std::vector<float>>> got, want;
    auto gk = ev_keys.download_raw(), gs = ev_scores.download_raw();
    auto gt = ev_stamps.download_raw();
    auto gr = ev_rows.download_raw();
    for (int64_t e = 0; e < evicted; ++e) {
      got[gk[e]] = {gs[e], gt[e],
                    std::vector<float>(gr.begin() + e * dim, gr.begin() + (e + 1) * dim)};
      want[cpu_evicted.keys[e]] = {cpu_evicted.scores[e], cpu_evicted.stamps[e],
                                   std::vector<float>(cpu_evicted.values.begin() + e * dim,
                                                      cpu_evicted.values.begin() + (e + 1) * dim)};
    }
    EXPECT_EQ(got, want);
    TableRows g = gpu.export_rows(0, stream), c = cpu.export_rows();
    EXPECT_EQ(g.keys, c.keys);
    EXPECT_EQ(g.scores, c.scores);
    EXPECT_EQ(g.stamps, c.stamps);
    EXPECT_EQ(g.values, c.values);
  }
}

TEST(CudaDynamicTable, EvictionOrderMatchesCpuTable) {
  GENREC_REQUIRE_CUDA();
  for (auto p : {EvictionPolicy::kLru, EvictionPolicy::kLfu, EvictionPolicy::kEpochLru,
                 EvictionPolicy::kEpochLfu, EvictionPolicy::kCustom}) {
    run_eviction_against_cpu(p);
  }
}

TEST(CudaDynamicTable, EvictionOrderMatchesCpuTableWithHostRows) {
  GENREC_REQUIRE_CUDA();
  for (auto p : {EvictionPolicy::kLru, EvictionPolicy::kLfu, EvictionPolicy::kCustom}) {
    run_eviction_against_cpu(p, 40);
  }
}

TEST(CudaDynamicTable, KeysOfTheBatchAreNeverEvicted) {
  GENREC_REQUIRE_CUDA();
  const int64_t dim = 8;
  CudaTableOptions opt = one_bucket(dim, 9);
  CudaDynamicTable table(opt);
  cuda::Stream stream;
  const std::vector<uint64_t> old_keys = insert_old_rows(table, 128, 10, stream);
  ASSERT_EQ(table.size(stream), 128);
  // 100 old keys (the oldest rows!) and 50 new ones: only the 28 other rows may go, so 28
  // new keys are stored and 22 are not (with every duplicate of theirs).
  table.set_step(2);
  std::vector<uint64_t> keys(old_keys.begin(), old_keys.begin() + 100);
  for (int i = 0; i < 50; ++i) keys.push_back(5000 + i);
  for (int i = 0; i < 50; ++i) keys.push_back(5000 + i);  // duplicates of the new keys
  const int64_t n = static_cast<int64_t>(keys.size());
  const auto [stored, out, evicted] = find_or_insert_evicting(table, keys, stream);
  int new_stored = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (i < 100) {
      ASSERT_EQ(stored[i], 1) << i;
      continue;
    }
    ASSERT_LE(stored[i], 1);
    ASSERT_EQ(stored[i], stored[i < 150 ? i + 50 : i - 50]) << "duplicates disagree at " << i;
    if (i < 150) new_stored += stored[i];
    std::vector<float> init(dim);
    opt.initializer.fill(keys[i], init.data(), dim);
    for (int j = 0; j < dim; ++j) ASSERT_EQ(out[i * dim + j], init[j]);
  }
  EXPECT_EQ(new_stored, 28);
  EXPECT_EQ(table.size(stream), 128);
  ASSERT_EQ(evicted.size(), 28u);
  EXPECT_EQ(std::set<uint64_t>(evicted.begin(), evicted.end()),
            std::set<uint64_t>(old_keys.begin() + 100, old_keys.end()));
  auto d_found = poisoned<uint8_t>(100);
  auto d_old = upload_raw(old_keys);
  table.contains(d_old.get(), 100, d_found.get(), stream);
  for (uint8_t f : d_found.download_raw()) EXPECT_EQ(f, 1);
  // A batch of 200 distinct new keys into the emptied bucket: 128 fit.
  table.clear(stream);
  std::vector<uint64_t> fresh(200);
  for (int i = 0; i < 200; ++i) fresh[i] = 90000 + i;
  std::vector<float> fresh_values(200 * dim, 2.0f);
  auto d_fresh = upload_raw(fresh);
  auto d_fresh_values = upload_raw(fresh_values);
  auto d_flags = poisoned<uint8_t>(200);
  table.insert_or_assign(d_fresh.get(), d_fresh_values.get(), 200, stream, d_flags.get());
  int stored_count = 0;
  for (uint8_t f : d_flags.download_raw()) stored_count += f;
  EXPECT_EQ(stored_count, 128);
  EXPECT_EQ(table.size(stream), 128);
  for (float v : table.export_rows(0, stream).values) ASSERT_EQ(v, 2.0f);
}

// 150 new keys, each 40 times in random order, race for a one-bucket table holding 64 old rows:
// the occurrences claim the 64 free slots without a lock, the rest evict the 64 old rows under
// it, and 22 keys find every slot taken by the batch. Every key must end up in one slot or in
// none, with all its occurrences agreeing.
TEST(CudaDynamicTable, NewKeysRaceForFreeAndEvictedSlots) {
  GENREC_REQUIRE_CUDA();
  const int64_t dim = 4;
  CudaTableOptions opt = one_bucket(dim, 17);
  CudaDynamicTable table(opt);
  cuda::Stream stream;
  const std::vector<uint64_t> old_keys = insert_old_rows(table, 64, 100, stream);
  table.set_step(2);
  std::vector<uint64_t> keys;
  for (int r = 0; r < 40; ++r) {
    for (uint64_t k = 0; k < 150; ++k) keys.push_back(7000 + k);
  }
  Philox rng(23);
  for (size_t i = keys.size() - 1; i > 0; --i) std::swap(keys[i], keys[rng.below(i + 1)]);
  const int64_t n = static_cast<int64_t>(keys.size());
  const auto [stored, out, evicted] = find_or_insert_evicting(table, keys, stream);
  std::map<uint64_t, uint8_t> flag_of;
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_LE(stored[i], 1) << i;
    const auto [it, fresh] = flag_of.emplace(keys[i], stored[i]);
    ASSERT_EQ(it->second, stored[i]) << "occurrences of key " << keys[i] << " disagree";
    std::vector<float> init(dim);
    opt.initializer.fill(keys[i], init.data(), dim);
    for (int j = 0; j < dim; ++j) ASSERT_EQ(out[i * dim + j], init[j]) << i;
  }
  std::set<uint64_t> stored_keys;
  for (const auto& [key, flag] : flag_of) {
    if (flag == 1) stored_keys.insert(key);
  }
  EXPECT_EQ(stored_keys.size(), 128u);
  EXPECT_EQ(table.size(stream), 128);
  const TableRows rows = table.export_rows(0, stream);
  EXPECT_EQ(std::set<uint64_t>(rows.keys.begin(), rows.keys.end()), stored_keys);
  ASSERT_EQ(rows.size(), 128);  // no key twice
  ASSERT_EQ(evicted.size(), 64u);
  EXPECT_EQ(std::set<uint64_t>(evicted.begin(), evicted.end()),
            std::set<uint64_t>(old_keys.begin(), old_keys.end()));
}

// insert_rows writes values, state, score and stamp exactly, overwrites present keys, evicts the
// lowest (score, key) rows other than the call's and the pinned keys (with their stamps), and
// reports a row it cannot place (a bucket of pinned keys only) as not stored. Without stamps it
// stamps the rows with the current step.
TEST(CudaDynamicTable, InsertRowsExactWithPinnedKeys) {
  GENREC_REQUIRE_CUDA();
  const int64_t dim = 6;
  CudaTableOptions opt = one_bucket(dim, 12);
  opt.optimizer = OptimizerState::kAdam;
  CudaDynamicTable table(opt);
  const int64_t sd = table.state_dim(), row_dim = table.row_dim();
  ASSERT_EQ(sd, 2 * dim + 1);
  cuda::Stream stream;
  // 100 rows: key 10 + i with score (LRU step) 1 + i / 10, so keys 10..19 are the oldest.
  std::vector<uint64_t> old_keys(100);
  for (int i = 0; i < 100; ++i) old_keys[i] = 10 + i;
  for (int g = 0; g < 10; ++g) {
    table.set_step(1 + g);
    auto d_group = upload_raw(
        std::vector<uint64_t>(old_keys.begin() + g * 10, old_keys.begin() + g * 10 + 10));
    auto d_out = poisoned<float>(10 * dim);
    table.find_or_insert(d_group.get(), 10, d_out.get(), nullptr, stream);
  }
  // 40 rows: 10 present keys (50..59) and 30 new ones; keys 10..13 pinned. 130 > 128 rows,
  // so the two lowest unpinned rows other than the call's go: keys 14 and 15.
  std::vector<uint64_t> keys;
  for (int i = 0; i < 10; ++i) keys.push_back(50 + i);
  for (int i = 0; i < 30; ++i) keys.push_back(1000 + i);
  const int64_t n = static_cast<int64_t>(keys.size());
  Philox rng(3);
  std::vector<float> values(n * dim), states(n * sd);
  std::vector<uint64_t> scores(n), stamps(n);
  for (auto& v : values) v = rng.uniform();
  for (auto& v : states) v = rng.uniform();
  for (auto& s : scores) s = rng.below(100);
  for (auto& s : stamps) s = 1000 + rng.below(100);
  std::vector<uint64_t> pinned = {10, 11, 12, 13};
  const TableRows before = table.export_rows(0, stream);
  auto d_keys = upload_raw(keys);
  auto d_values = upload_raw(values);
  auto d_states = upload_raw(states);
  auto d_scores = upload_raw(scores);
  auto d_stamps = upload_raw(stamps);
  auto d_pinned = upload_raw(pinned);
  auto d_stored = poisoned<uint8_t>(n);
  DeviceArray<uint64_t> ev_keys(n), ev_scores(n);
  auto ev_stamps = poisoned<uint64_t>(n);
  DeviceArray<float> ev_rows(n * row_dim);
  auto ev_count = upload_raw(std::vector<int64_t>{0});
  cuda::EvictedRows ev{ev_keys.get(), ev_rows.get(), ev_scores.get(), ev_count.get(),
                       ev_stamps.get()};
  table.set_step(20);
  table.insert_rows(d_keys.get(), d_values.get(), d_states.get(), d_scores.get(), n, stream,
                    d_stored.get(), &ev, d_pinned.get(), 4, d_stamps.get());
  for (uint8_t s : d_stored.download_raw()) ASSERT_EQ(s, 1);
  ASSERT_EQ(ev_count.download_raw()[0], 2);
  auto gk = ev_keys.download_raw();
  auto gs = ev_scores.download_raw();
  auto gt = ev_stamps.download_raw();
  auto gr = ev_rows.download_raw();
  std::map<uint64_t, std::tuple<uint64_t, uint64_t, std::vector<float>>> got, want;
  for (int e = 0; e < 2; ++e) {
    got[gk[e]] = {gs[e], gt[e],
                  std::vector<float>(gr.begin() + e * row_dim, gr.begin() + (e + 1) * row_dim)};
  }
  for (int64_t r = 0; r < before.size(); ++r) {
    if (before.keys[r] != 14 && before.keys[r] != 15) continue;
    std::vector<float> row(before.values.begin() + r * dim, before.values.begin() + (r + 1) * dim);
    row.insert(row.end(), before.states.begin() + r * sd, before.states.begin() + (r + 1) * sd);
    EXPECT_EQ(before.stamps[r], 1u);  // inserted by find_or_insert at step 1
    want[before.keys[r]] = {before.scores[r], before.stamps[r], row};
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(table.size(stream), 128);
  // The inserted rows are exact: values, state, score (no policy update), stamp.
  auto d_out = poisoned<float>(n * dim);
  auto d_out_states = poisoned<float>(n * sd);
  auto d_out_scores = poisoned<uint64_t>(n);
  auto d_out_stamps = poisoned<uint64_t>(n);
  auto d_found = poisoned<uint8_t>(n);
  table.find(d_keys.get(), n, d_out.get(), d_found.get(), stream, d_out_states.get(),
             d_out_scores.get(), d_out_stamps.get());
  for (uint8_t f : d_found.download_raw()) ASSERT_EQ(f, 1);
  EXPECT_EQ(d_out.download_raw(), values);
  EXPECT_EQ(d_out_states.download_raw(), states);
  EXPECT_EQ(d_out_scores.download_raw(), scores);
  EXPECT_EQ(d_out_stamps.download_raw(), stamps);
  // Every row pinned: a new row finds no place and nothing is evicted.
  const TableRows all = table.export_rows(0, stream);
  auto d_all = upload_raw(all.keys);
  auto d_new = upload_raw(std::vector<uint64_t>{5000});
  auto d_one_stored = poisoned<uint8_t>(1);
  ev_count = upload_raw(std::vector<int64_t>{0});
  ev.count = ev_count.get();
  table.insert_rows(d_new.get(), d_values.get(), d_states.get(), d_scores.get(), 1, stream,
                    d_one_stored.get(), &ev, d_all.get(), all.size());
  EXPECT_EQ(d_one_stored.download_raw()[0], 0);
  EXPECT_EQ(ev_count.download_raw()[0], 0);
  EXPECT_EQ(table.export_rows(0, stream).keys, all.keys);
  // Without stamps: the current step.
  table.set_step(21);
  table.insert_rows(d_keys.get(), d_values.get(), d_states.get(), d_scores.get(), 5, stream);
  auto d_five_stamps = poisoned<uint64_t>(5);
  table.find(d_keys.get(), 5, nullptr, nullptr, stream, nullptr, nullptr, d_five_stamps.get());
  EXPECT_EQ(d_five_stamps.download_raw(), std::vector<uint64_t>(5, 21));
}

TEST(CudaDynamicTable, ExportByScoreAndStampThresholds) {
  GENREC_REQUIRE_CUDA();
  const int64_t dim = 6;
  CudaTableOptions opt;
  opt.dim = dim;
  opt.optimizer = OptimizerState::kAdagrad;
  opt.initial_state = 0.5f;
  opt.capacity = 8192;
  CudaDynamicTable table(opt);
  cuda::Stream stream;
  for (int step = 1; step <= 5; ++step) {
    table.set_step(step);
    std::vector<uint64_t> keys(100);
    std::vector<float> values(100 * dim);
    for (int i = 0; i < 100; ++i) {
      keys[i] = step * 1000 + i;
      std::fill_n(values.begin() + i * dim, dim, static_cast<float>(keys[i]));
    }
    auto d_keys = upload_raw(keys);
    auto d_values = upload_raw(values);
    table.insert_or_assign(d_keys.get(), d_values.get(), 100, stream);
  }
  TableRows rows = table.export_rows(3, stream);
  ASSERT_EQ(rows.size(), 300);
  for (int64_t r = 0; r < rows.size(); ++r) {
    ASSERT_GE(rows.keys[r], 3000u);
    ASSERT_EQ(rows.scores[r], rows.keys[r] / 1000);
    for (int j = 0; j < dim; ++j)
      ASSERT_EQ(rows.values[r * dim + j], static_cast<float>(rows.keys[r]));
    ASSERT_EQ(rows.states[r], 0.5f);
  }
  // The device call over two slot ranges finds every row once.
  const int64_t cap = table.capacity();
  DeviceArray<uint64_t> keys_out(cap);
  DeviceArray<float> values_out(cap * dim);
  auto count = upload_raw(std::vector<int64_t>{0});
  table.export_batch(0, cap / 2, keys_out.get(), values_out.get(), count.get(), stream);
  table.export_batch(cap / 2, cap, keys_out.get(), values_out.get(), count.get(), stream);
  ASSERT_EQ(count.download_raw()[0], 500);
  auto got = keys_out.download_raw();
  EXPECT_EQ(std::set<uint64_t>(got.begin(), got.begin() + 500).size(), 500u);
  // Stamps: step 9 assigns keys 1000..1009, so stamps >= 5 are step 5's rows and those ten.
  table.set_step(9);
  std::vector<uint64_t> early(10);
  for (int i = 0; i < 10; ++i) early[i] = 1000 + i;
  auto d_early = upload_raw(early);
  auto d_early_values = upload_raw(std::vector<float>(10 * dim, -1.0f));
  table.assign(d_early.get(), d_early_values.get(), 10, stream);
  rows = table.export_rows(0, stream, 5);
  ASSERT_EQ(rows.size(), 110);
  for (int64_t r = 0; r < rows.size(); ++r) {
    const bool assigned = rows.keys[r] < 2000;
    ASSERT_TRUE(assigned || rows.keys[r] >= 5000) << rows.keys[r];
    ASSERT_EQ(rows.stamps[r], assigned ? 9u : 5u) << rows.keys[r];
    ASSERT_EQ(rows.values[r * dim], assigned ? -1.0f : static_cast<float>(rows.keys[r]));
  }
  EXPECT_EQ(table.export_rows(6, stream, 5).keys, early);  // both thresholds
  // The device call with stamps out, over the whole table at once.
  auto stamps_out = poisoned<uint64_t>(cap);
  count = upload_raw(std::vector<int64_t>{0});
  table.export_batch(0, cap, keys_out.get(), values_out.get(), count.get(), stream, nullptr,
                     nullptr, 0, stamps_out.get(), 9);
  ASSERT_EQ(count.download_raw()[0], 10);
  got = keys_out.download_raw();
  EXPECT_EQ(std::set<uint64_t>(got.begin(), got.begin() + 10),
            std::set<uint64_t>(early.begin(), early.end()));
  auto got_stamps = stamps_out.download_raw();
  EXPECT_EQ(std::vector<uint64_t>(got_stamps.begin(), got_stamps.begin() + 10),
            std::vector<uint64_t>(10, 9));
}

TEST(CudaDynamicTable, ReserveKeepsRowsAndGrows) {
  GENREC_REQUIRE_CUDA();
  const int64_t dim = 16;
  CudaTableOptions opt;
  opt.dim = dim;
  opt.optimizer = OptimizerState::kAdam;
  opt.initializer = {InitKind::kUniform, 0.1f, 1};
  opt.capacity = 1024;
  opt.eviction = EvictionPolicy::kLfu;
  CudaDynamicTable table(opt);
  cuda::Stream stream;
  Philox rng(77);
  std::vector<uint64_t> keys(600);
  for (auto& k : keys) k = rng.next_u64() >> 2;
  auto d_keys = upload_raw(keys);
  auto d_out = poisoned<float>(600 * dim);
  table.set_step(3);
  table.find_or_insert(d_keys.get(), 600, d_out.get(), nullptr, stream);
  table.set_step(4);
  table.find_or_insert(d_keys.get(), 300, d_out.get(), nullptr, stream);
  table.set_step(5);
  table.assign(d_keys.get(), d_out.get(), 100, stream);  // stamps 5 and 3
  ASSERT_EQ(table.size(stream), 600);
  const TableRows before = table.export_rows(0, stream);
  table.reserve(100000, stream);
  EXPECT_EQ(table.capacity(), 131072);
  EXPECT_EQ(table.size(stream), 600);
  const TableRows after = table.export_rows(0, stream);
  EXPECT_EQ(after.keys, before.keys);
  EXPECT_EQ(after.values, before.values);
  EXPECT_EQ(after.states, before.states);
  EXPECT_EQ(after.scores, before.scores);
  EXPECT_EQ(after.stamps, before.stamps);
  EXPECT_EQ(std::count(after.stamps.begin(), after.stamps.end(), 5u), 100);
  table.reserve(10, stream);  // never shrinks
  EXPECT_EQ(table.capacity(), 131072);
  std::vector<uint64_t> more(20000);
  for (auto& k : more) k = rng.next_u64() >> 2;
  auto d_more = upload_raw(more);
  auto d_more_out = poisoned<float>(20000 * dim);
  auto d_stored = poisoned<uint8_t>(20000);
  table.find_or_insert(d_more.get(), 20000, d_more_out.get(), d_stored.get(), stream);
  for (uint8_t s : d_stored.download_raw()) ASSERT_EQ(s, 1);
  EXPECT_EQ(table.size(stream), 20600);
}

// Every removal is logged with the table step of its call: erase (present keys only, once per
// row however often the batch repeats the key), the evictions of find_or_insert, insert_or_assign
// and insert_rows (the rows they write out) and clear (every key). removed_since(s) is the keys
// removed after step s, sorted and distinct; forget_removals drops the older entries and the log
// goes on after it.
TEST(CudaDynamicTable, RemovalLogKeepsEachRemovalWithItsStep) {
  GENREC_REQUIRE_CUDA();
  const int64_t dim = 4;
  CudaDynamicTable table(one_bucket(dim, 3));
  ASSERT_TRUE(table.options().log_removals) << "on by default, as on the CPU";
  cuda::Stream stream;
  std::vector<std::pair<uint64_t, uint64_t>> logged;  // (key, step): what the log must hold
  auto log = [&](const std::vector<uint64_t>& keys, uint64_t step) {
    for (uint64_t k : keys) logged.emplace_back(k, step);
  };
  auto since = [&](uint64_t step) {
    std::set<uint64_t> keys;
    for (const auto& [key, s] : logged) {
      if (s > step) keys.insert(key);
    }
    return std::vector<uint64_t>(keys.begin(), keys.end());
  };
  auto sorted = [](std::vector<uint64_t> keys) {
    std::sort(keys.begin(), keys.end());
    return keys;
  };
  insert_old_rows(table, 128, 10, stream);  // keys 10 to 137 at step 1: the bucket is full
  EXPECT_TRUE(table.removed_since(0, stream).empty());

  table.set_step(2);
  auto d_erase = upload_raw(std::vector<uint64_t>{10, 11, 500, 10});
  auto d_erased = poisoned<uint8_t>(4);
  table.erase(d_erase.get(), 4, stream, d_erased.get());
  const auto erased = d_erased.download_raw();
  EXPECT_EQ(erased[0] + erased[3], 1) << "one occurrence of 10 removed its row";
  EXPECT_EQ(erased[1], 1);
  EXPECT_EQ(erased[2], 0);
  log({10, 11}, 2);

  table.set_step(3);  // 4 new keys: 2 into the erased rows' room, 2 evicting the oldest rows
  const auto fresh = find_or_insert_evicting(table, {1000, 1001, 1002, 1003}, stream);
  EXPECT_EQ(sorted(fresh.evicted), (std::vector<uint64_t>{12, 13}));
  log(fresh.evicted, 3);

  table.set_step(4);  // 10 comes back, evicting one row
  EvictedKeys back_evicted(1);
  auto d_back = upload_raw(std::vector<uint64_t>{10});
  auto d_back_values = upload_raw(std::vector<float>(dim, 2.0f));
  table.insert_or_assign(d_back.get(), d_back_values.get(), 1, stream, nullptr, nullptr,
                         back_evicted.rows());
  EXPECT_EQ(back_evicted.keys(), std::vector<uint64_t>{14});
  log(back_evicted.keys(), 4);

  table.set_step(5);  // and goes again: removed at two steps, listed once
  table.erase(std::vector<uint64_t>{10}, stream);
  log({10}, 5);

  table.set_step(6);  // 2 whole rows: one into the room, one evicting
  EvictedKeys rows_evicted(2);
  auto d_rows = upload_raw(std::vector<uint64_t>{2000, 2001});
  auto d_rows_values = upload_raw(std::vector<float>(2 * dim, 3.0f));
  auto d_rows_scores = upload_raw(std::vector<uint64_t>{6, 6});
  table.insert_rows(d_rows.get(), d_rows_values.get(), nullptr, d_rows_scores.get(), 2, stream,
                    nullptr, rows_evicted.rows());
  EXPECT_EQ(rows_evicted.keys(), std::vector<uint64_t>{15});
  log(rows_evicted.keys(), 6);

  table.set_step(7);
  const TableRows cleared = table.export_rows(0, stream);
  ASSERT_EQ(cleared.size(), 128);
  table.clear(stream);
  EXPECT_EQ(table.size(stream), 0);
  log(cleared.keys, 7);
  for (uint64_t s = 0; s <= 8; ++s) EXPECT_EQ(table.removed_since(s, stream), since(s)) << s;
  EXPECT_EQ(since(1).size(), 6u + 128u) << "10 once";

  table.forget_removals(4, stream);
  std::erase_if(logged, [](const auto& entry) { return entry.second <= 4; });
  for (uint64_t s = 0; s <= 8; ++s) EXPECT_EQ(table.removed_since(s, stream), since(s)) << s;
  table.forget_removals(7, stream);
  EXPECT_TRUE(table.removed_since(0, stream).empty());
  table.clear(stream);                      // empty: nothing to log
  insert_old_rows(table, 1, 3000, stream);  // at step 1
  table.erase(std::vector<uint64_t>{3000}, stream);
  EXPECT_EQ(table.removed_since(0, stream), std::vector<uint64_t>{3000});
}

// The log starts small and grows as removals come, by erasing calls queued back to back (the host
// only bounds the count) and by a clear of more keys than it has room for: no removal is lost
// and none is written twice.
TEST(CudaDynamicTable, RemovalLogGrowsWithoutLosingRemovals) {
  GENREC_REQUIRE_CUDA();
  CudaTableOptions opt;
  opt.dim = 4;
  opt.capacity = 1 << 16;
  CudaDynamicTable table(opt);
  cuda::Stream stream;
  constexpr int64_t kKeys = 24000, kBatch = 1000, kBatches = 12;
  std::vector<uint64_t> keys(kKeys);
  for (int64_t i = 0; i < kKeys; ++i) keys[i] = 1 + static_cast<uint64_t>(i) * 7919;
  auto d_keys = upload_raw(keys);
  auto d_values = upload_raw(std::vector<float>(kKeys * opt.dim, 1.0f));
  table.set_step(1);
  table.insert_or_assign(d_keys.get(), d_values.get(), kKeys, stream);
  ASSERT_EQ(table.size(stream), kKeys) << "no bucket filled";
  for (int64_t b = 0; b < kBatches; ++b) {  // batch b at step 2 + b
    table.set_step(2 + b);
    table.erase(d_keys.get() + b * kBatch, kBatch, stream);
  }
  table.set_step(2 + kBatches);
  table.clear(stream);
  for (uint64_t s : {0, 1, 2, 7, 13, 14}) {
    // After step s: the batches from s - 1 on and the clear (step 14).
    const int64_t first = std::min<int64_t>(std::max<int64_t>(s, 1) - 1, kBatches) * kBatch;
    std::vector<uint64_t> want(keys.begin() + (s < 14 ? first : kKeys), keys.end());
    std::sort(want.begin(), want.end());
    EXPECT_EQ(table.removed_since(s, stream), want) << s;
  }
}

TEST(CudaDynamicTable, NoRemovalLogWhenOff) {
  GENREC_REQUIRE_CUDA();
  CudaTableOptions opt = one_bucket(4, 4);
  EXPECT_FALSE(opt.as_tier().log_removals);
  opt.log_removals = false;
  CudaDynamicTable table(opt);
  cuda::Stream stream;
  insert_old_rows(table, 128, 10, stream);
  table.set_step(2);
  table.erase(std::vector<uint64_t>{10, 11}, stream);
  EXPECT_EQ(find_or_insert_evicting(table, {1000, 1001, 1002, 1003}, stream).evicted.size(), 2u);
  table.clear(stream);
  EXPECT_EQ(table.size(stream), 0);
  EXPECT_TRUE(table.removed_since(0, stream).empty());
  table.forget_removals(0, stream);  // nothing to drop
}

TEST(CudaDynamicTable, EmptyBatchesAndReservedKey) {
  GENREC_REQUIRE_CUDA();
  CudaTableOptions opt;
  opt.dim = 4;
  opt.initializer = {InitKind::kUniform, 1.0f, 2};
  CudaDynamicTable table(opt);
  cuda::Stream stream;
  table.find(nullptr, 0, nullptr, nullptr, stream);
  table.find_or_insert(nullptr, 0, nullptr, nullptr, stream);
  table.insert_or_assign(nullptr, nullptr, 0, stream);
  table.assign(nullptr, nullptr, 0, stream);
  table.erase(nullptr, 0, stream);
  EXPECT_EQ(table.size(stream), 0);
  EXPECT_EQ(table.export_rows(0, stream).size(), 0);
  // kEmptyKey is never stored; the other keys of its batch are.
  std::vector<uint64_t> keys = {kEmptyKey, 3};
  auto d_keys = upload_raw(keys);
  auto d_out = poisoned<float>(8);
  auto d_stored = poisoned<uint8_t>(2);
  table.find_or_insert(d_keys.get(), 2, d_out.get(), d_stored.get(), stream);
  EXPECT_EQ(d_stored.download_raw(), (std::vector<uint8_t>{0, 1}));
  for (float v : d_out.download_raw()) EXPECT_FALSE(is_poison(v));
  EXPECT_EQ(table.size(stream), 1);
  EXPECT_THROW(table.find_or_insert(d_keys.get(), -1, d_out.get(), nullptr, stream), Error);
  auto d_scores = upload_raw(std::vector<uint64_t>{1, 2});
  EXPECT_THROW(table.find_or_insert(d_keys.get(), 2, d_out.get(), nullptr, stream, d_scores.get()),
               Error);
}

TEST(CudaDynamicTable, ConcurrentBatchesFromThreads) {
  GENREC_REQUIRE_CUDA();
  const int64_t dim = 16;
  CudaTableOptions opt;
  opt.dim = dim;
  opt.capacity = 1 << 16;
  CudaDynamicTable table(opt);
  constexpr int kThreadsN = 4, kBatches = 10, kPerBatch = 500;
  std::vector<std::thread> threads;
  std::vector<int> errors(kThreadsN, 0);
  for (int t = 0; t < kThreadsN; ++t) {
    threads.emplace_back([&, t] {
      // Blocking streams: the test's uploads and poisoning run on the legacy default stream.
      cuda::Stream stream;
      for (int b = 0; b < kBatches; ++b) {
        std::vector<uint64_t> keys(kPerBatch);
        std::vector<float> values(kPerBatch * dim);
        for (int i = 0; i < kPerBatch; ++i) {
          keys[i] = (static_cast<uint64_t>(t) << 32) | (b * kPerBatch + i);
          std::fill_n(values.begin() + i * dim, dim, static_cast<float>(keys[i] % 1000003));
        }
        auto d_keys = upload_raw(keys);
        auto d_values = upload_raw(values);
        table.insert_or_assign(d_keys.get(), d_values.get(), kPerBatch, stream);
        auto d_out = poisoned<float>(kPerBatch * dim);
        auto d_found = poisoned<uint8_t>(kPerBatch);
        table.find(d_keys.get(), kPerBatch, d_out.get(), d_found.get(), stream);
        stream.synchronize();
        if (d_out.download_raw() != values) ++errors[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreadsN; ++t) EXPECT_EQ(errors[t], 0) << "thread " << t;
  EXPECT_EQ(table.size(), kThreadsN * kBatches * kPerBatch);
  TableRows rows = table.export_rows();
  ASSERT_EQ(rows.size(), kThreadsN * kBatches * kPerBatch);
  for (int64_t r = 0; r < rows.size(); ++r) {
    ASSERT_EQ(rows.values[r * dim], static_cast<float>(rows.keys[r] % 1000003));
  }
}

TEST(CudaDynamicTable, InitialRowsMatchCpuTable) {
  GENREC_REQUIRE_CUDA();
  for (InitKind kind : {InitKind::kUniform, InitKind::kNormal}) {
    const int64_t dim = 33;
    CudaTableOptions opt;
    opt.dim = dim;
    opt.optimizer = OptimizerState::kAdagrad;
    opt.initial_state = 0.1f;
    opt.initializer = {kind, 0.05f, 1234};
    CudaDynamicTable gpu(opt);
    TableOptions copt;
    copt.dim = dim;
    copt.optimizer = opt.optimizer;
    copt.initial_state = opt.initial_state;
    copt.initializer = opt.initializer;
    DynamicTable cpu(copt);
    cuda::Stream stream;
    std::vector<uint64_t> keys(1000);
    for (int i = 0; i < 1000; ++i) keys[i] = i * 7919ull;
    auto d_keys = upload_raw(keys);
    auto d_out = poisoned<float>(1000 * dim);
    gpu.find_or_insert(d_keys.get(), 1000, d_out.get(), nullptr, stream);
    std::vector<float> want(1000 * dim);
    cpu.find_or_insert(keys.data(), 1000, want.data());
    auto got = d_out.download_raw();
    for (size_t e = 0; e < want.size(); ++e) {
      // Uniform rows are bit-identical; normal rows go through logf/cosf (a few ulp apart).
      if (kind == InitKind::kUniform) {
        ASSERT_EQ(got[e], want[e]) << e;
      } else {
        ASSERT_NEAR(got[e], want[e], 1e-6f + 1e-5f * std::abs(want[e])) << e;
      }
    }
    TableRows g = gpu.export_rows(0, stream), c = cpu.export_rows();
    EXPECT_EQ(g.keys, c.keys);
    EXPECT_EQ(g.states, c.states);
  }
}

}  // namespace
}  // namespace genrec
