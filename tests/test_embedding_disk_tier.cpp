// Disk tier (built with RocksDB only): random batches through hot, host and disk against a
// model of every row, exact round trips, exclusive tiers, statistics that add up, a scratch
// database that starts clean, and errors that name the path.
#include <gtest/gtest.h>
#include <rocksdb/db.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "core/error.h"
#include "core/philox.h"
#include "embedding/disk_tier.h"
#include "embedding/tiered_table.h"
#include "tiered_dump_check.h"

namespace genrec {
namespace {

namespace fs = std::filesystem;

std::string fresh_dir(const std::string& name) {
  const fs::path dir = fs::path(testing::TempDir()) / "genrec_disk_tier" / name;
  fs::remove_all(dir);
  fs::create_directories(dir.parent_path());
  return dir.string();
}

struct ModelRow {
  std::vector<float> values, states;
  uint64_t score = 0, stamp = 0;
};

// Every row of `rows` equals the model's, bit for bit.
void expect_rows_match(const TableRows& rows, const std::unordered_map<uint64_t, ModelRow>& model,
                       int64_t dim, int64_t sd, const char* where) {
  for (int64_t i = 0; i < rows.size(); ++i) {
    const uint64_t key = rows.keys[i];
    auto it = model.find(key);
    ASSERT_NE(it, model.end()) << where << ": unknown key " << key;
    const ModelRow& m = it->second;
    EXPECT_EQ(0, std::memcmp(&rows.values[i * dim], m.values.data(), 4 * dim))
        << where << ": values of key " << key;
    EXPECT_EQ(0, std::memcmp(&rows.states[i * sd], m.states.data(), 4 * sd))
        << where << ": state of key " << key;
    EXPECT_EQ(rows.scores[i], m.score) << where << ": score of key " << key;
    EXPECT_EQ(rows.stamps[i], m.stamp) << where << ": stamp of key " << key;
  }
}

// Random batches against the model; a host smaller than hot's evictions of one call sends some
// rows from hot straight to disk.
void run_random_batches(int64_t host_capacity, const std::string& name) {
  const int64_t dim = 4;
  TableOptions hot;
  hot.dim = dim;
  hot.optimizer = OptimizerState::kAdam;
  hot.max_capacity = 8;
  hot.num_shards = 2;
  hot.initializer = {InitKind::kUniform, 1.0f, 3};
  TableOptions host = hot;
  host.max_capacity = host_capacity;
  const int64_t sd = optimizer_state_dim(hot.optimizer, dim);
  const std::string dir = fresh_dir(name);
  TieredTable t(hot, host, std::make_unique<DiskTier>(dir, dim, sd));

  std::unordered_map<uint64_t, ModelRow> model;
  Philox rng(17);
  int64_t occurrences = 0;
  for (uint64_t step = 1; step <= 300; ++step) {
    t.set_step(step);
    // Up to 8 distinct keys (the hot capacity) out of 64, with repeats; some keys are huge so
    // that byte order matters on disk.
    std::vector<uint64_t> distinct;
    const int64_t d = 1 + rng.below(8);
    while (static_cast<int64_t>(distinct.size()) < d) {
      uint64_t k = rng.below(64);
      if (k % 5 == 0) k |= uint64_t{1} << 63;
      if (std::find(distinct.begin(), distinct.end(), k) == distinct.end()) distinct.push_back(k);
    }
    std::vector<uint64_t> keys = distinct;
    for (int64_t r = rng.below(4); r > 0; --r) keys.push_back(distinct[rng.below(d)]);
    const int64_t n = static_cast<int64_t>(keys.size());
    occurrences += n;
    std::vector<float> out(n * dim);
    std::vector<uint8_t> stored(n);
    t.find_or_insert(keys.data(), n, out.data(), stored.data());
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(stored[i], 1);
      auto [it, is_new] = model.try_emplace(keys[i]);
      ModelRow& m = it->second;
      if (is_new) {
        m.values.assign(&out[i * dim], &out[i * dim] + dim);
        m.states.assign(sd, 0.0f);
        m.stamp = step;
      }
      ASSERT_EQ(0, std::memcmp(&out[i * dim], m.values.data(), 4 * dim))
          << "step " << step << " key " << keys[i];
      m.score = step;  // LRU: the step of the last access
    }
    // Write every other distinct key, as an optimizer step would, so rows carry state.
    std::vector<uint64_t> written;
    for (int64_t j = 0; j < d; j += 2) written.push_back(distinct[j]);
    auto update = [&](uint64_t key, float* v, float* s) {
      for (int64_t j = 0; j < dim; ++j) v[j] = v[j] * 0.5f + static_cast<float>(key % 7);
      for (int64_t j = 0; j < sd; ++j) s[j] += static_cast<float>(step + j);
    };
    t.hot().update_rows(written.data(), static_cast<int64_t>(written.size()),
                        [&](int64_t i, float* v, float* s) { update(written[i], v, s); });
    for (uint64_t key : written) {
      ModelRow& m = model[key];
      update(key, m.values.data(), m.states.data());
      m.stamp = step;
    }

    // Exclusive tiers that together hold exactly the model's rows.
    const TableRows in_hot = t.hot().export_rows(), in_host = t.host().export_rows(),
                    on_disk = t.cold()->export_rows();
    std::unordered_set<uint64_t> all;
    for (const TableRows* tier : {&in_hot, &in_host, &on_disk}) {
      for (uint64_t k : tier->keys) ASSERT_TRUE(all.insert(k).second) << "key " << k << " twice";
    }
    ASSERT_EQ(all.size(), model.size());
    ASSERT_EQ(t.size(), static_cast<int64_t>(model.size()));
    ASSERT_TRUE(std::is_sorted(on_disk.keys.begin(), on_disk.keys.end()));
    expect_rows_match(on_disk, model, dim, sd, "disk");
    if (step % 50 == 0) expect_rows_match(t.export_rows(), model, dim, sd, "export");

    // Statistics add up: every occurrence counted once, every row movement accounted for.
    const TierStats s = t.stats();
    ASSERT_EQ(s.hot_hits + s.host_hits + s.cold_hits + s.misses, occurrences);
    ASSERT_EQ(s.misses, static_cast<int64_t>(model.size()));
    ASSERT_EQ(s.promoted, s.host_hits);
    ASSERT_EQ(s.fetched, s.cold_hits);
    ASSERT_EQ(in_hot.size(), s.misses + s.promoted + s.fetched - s.demoted);
    ASSERT_EQ(in_host.size(), s.demoted - s.promoted - s.spilled);
    ASSERT_EQ(on_disk.size(), s.spilled - s.fetched);
    ASSERT_EQ(t.cold()->size(), on_disk.size());
  }
  const TierStats s = t.stats();
  EXPECT_GT(s.spilled, 100) << "rows must go to disk";
  EXPECT_GT(s.cold_hits, 50) << "and come back";
  EXPECT_GT(s.host_hits, 10);

  // find reads every tier and moves nothing.
  std::vector<uint64_t> keys;
  for (const auto& [k, m] : model) keys.push_back(k);
  keys.push_back(12345);  // never inserted
  const int64_t n = static_cast<int64_t>(keys.size());
  std::vector<float> out(n * dim);
  std::vector<uint8_t> found(n);
  const int64_t disk_rows = t.cold()->size();
  t.find(keys.data(), n, out.data(), found.data());
  for (int64_t i = 0; i + 1 < n; ++i) {
    ASSERT_EQ(found[i], 1) << "key " << keys[i];
    EXPECT_EQ(0, std::memcmp(&out[i * dim], model[keys[i]].values.data(), 4 * dim));
  }
  EXPECT_EQ(found[n - 1], 0);
  EXPECT_EQ(t.cold()->size(), disk_rows);
  EXPECT_EQ(t.stats().hot_hits, s.hot_hits);
}

TEST(EmbeddingDiskTier, RandomBatchesMatchModel) {
  run_random_batches(12, "random");
}

TEST(EmbeddingDiskTier, HostSmallerThanEvictions) {
  run_random_batches(3, "small_host");
}

TEST(EmbeddingDiskTier, RecordsKeepKeyOrderAndEveryField) {
  const std::string dir = fresh_dir("records");
  DiskTier disk(dir, 2, 1);
  TableRows rows;
  // Little-endian keys would sort 0x100 before 0xFF and 2^63 before 1.
  rows.keys = {uint64_t{1} << 63, 0x100, 0xFF, 0, ~uint64_t{0} - 1};
  for (int64_t i = 0; i < 5; ++i) {
    rows.values.push_back(static_cast<float>(i) + 0.25f);
    rows.values.push_back(-1e-30f * static_cast<float>(i));
    rows.states.push_back(1e30f);
    rows.scores.push_back(~uint64_t{0} - static_cast<uint64_t>(i));
    rows.stamps.push_back(uint64_t{1} << (i * 10));
  }
  disk.put(rows);
  EXPECT_EQ(disk.size(), 5);
  const TableRows all = disk.export_rows();
  ASSERT_EQ(all.keys, std::vector<uint64_t>({0, 0xFF, 0x100, uint64_t{1} << 63, ~uint64_t{0} - 1}));
  // take returns rows in the order asked, absent keys skipped, and deletes them.
  std::vector<uint64_t> ask = {0xFF, 7, uint64_t{1} << 63};
  const TableRows got = disk.take(ask.data(), 3);
  ASSERT_EQ(got.keys, std::vector<uint64_t>({0xFF, uint64_t{1} << 63}));
  for (int64_t j = 0; j < 2; ++j) {
    const int64_t i = got.keys[j] == 0xFF ? 2 : 0;
    EXPECT_EQ(0, std::memcmp(&got.values[j * 2], &rows.values[i * 2], 8));
    EXPECT_EQ(got.states[j], rows.states[i]);
    EXPECT_EQ(got.scores[j], rows.scores[i]);
    EXPECT_EQ(got.stamps[j], rows.stamps[i]);
  }
  EXPECT_EQ(disk.size(), 3);
  EXPECT_EQ(disk.export_rows().keys, std::vector<uint64_t>({0, 0x100, ~uint64_t{0} - 1}));
  EXPECT_EQ(disk.take(ask.data(), 3).size(), 0) << "taken rows are gone";
  TableRows wrong;
  wrong.keys = {5};
  wrong.values = {1.0f};  // dim 2 expected
  wrong.states = {0.0f};
  wrong.scores = {0};
  wrong.stamps = {0};
  EXPECT_THROW(disk.put(wrong), Error);
}

TEST(EmbeddingDiskTier, ScratchDatabaseStartsCleanAndIsRemoved) {
  const std::string dir = fresh_dir("scratch");
  // A database left behind (as by a crashed run), with a record and a file of someone else.
  {
    rocksdb::Options options;
    options.create_if_missing = true;
    rocksdb::DB* db = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(options, dir, &db).ok());
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), std::string(8, '\0'), "stale").ok());
    delete db;
    std::ofstream(fs::path(dir) / "notes.txt") << "not RocksDB's";
  }
  {
    DiskTier disk(dir, 1, 0);
    EXPECT_EQ(disk.size(), 0);
    EXPECT_EQ(disk.export_rows().size(), 0) << "the left-over record was not cleared";
    TableRows rows;
    rows.keys = {42};
    rows.values = {1.5f};
    rows.scores = {1};
    rows.stamps = {1};
    disk.put(rows);
  }
  EXPECT_TRUE(fs::exists(fs::path(dir) / "notes.txt")) << "only RocksDB's files are deleted";
  EXPECT_FALSE(fs::exists(fs::path(dir) / "CURRENT")) << "closing deletes the database";
  DiskTier reopened(dir, 1, 0);
  EXPECT_EQ(reopened.export_rows().size(), 0);
}

TEST(EmbeddingDiskTier, UnopenablePathNamesPathAndCause) {
  const std::string dir = fresh_dir("unopenable");
  fs::create_directories(dir);
  const std::string file = (fs::path(dir) / "plain_file").string();
  std::ofstream(file) << "x";
  for (const std::string& path : {file + "/db", file}) {
    try {
      DiskTier disk(path, 4, 0);
      ADD_FAILURE() << "opened " << path;
    } catch (const Error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(path), std::string::npos) << message;
      EXPECT_NE(message.find("failed: "), std::string::npos) << message;
    }
  }
}

TEST(EmbeddingDiskTier, ColdTierNeedsBoundedHost) {
  TableOptions hot;
  hot.dim = 2;
  hot.max_capacity = 2;
  TableOptions host = hot;
  host.max_capacity = 0;
  EXPECT_THROW(TieredTable(hot, host, std::make_unique<DiskTier>(fresh_dir("unbounded"), 2, 0)),
               Error);
}

// Dumps cover the disk tier too; a load spills what the bounded host cannot hold to disk.
TEST(EmbeddingDiskTier, DumpAndLoadRoundTripOverAllTiers) {
  const std::string dir = fresh_dir("dump");
  fs::create_directories(dir);
  int tables = 0;
  auto make = [&] {
    const TableOptions hot = test::round_trip_hot_options();
    TableOptions host = hot;
    host.max_capacity = 12;
    const int64_t sd = optimizer_state_dim(hot.optimizer, hot.dim);
    return std::make_unique<TieredTable>(
        hot, host, std::make_unique<DiskTier>(dir + "/db" + std::to_string(tables++), hot.dim, sd));
  };
  test::check_tiered_dump_round_trip(make, dir);
}

}  // namespace
}  // namespace genrec
