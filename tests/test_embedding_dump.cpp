// Dump and load: exact round trips, incremental dumps, and damaged files.
#include <gtest/gtest.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/philox.h"
#include "embedding/sparse_optimizer.h"
#include "embedding/table_dump.h"
#include "temp_dir.h"

namespace genrec {
namespace {

namespace fs = std::filesystem;

TableOptions adam_options() {
  TableOptions opt;
  opt.dim = 6;
  opt.optimizer = OptimizerState::kAdam;
  opt.eviction = EvictionPolicy::kLfu;
  opt.initializer = {InitKind::kNormal, 0.3f, 5};
  opt.num_shards = 4;
  return opt;
}

// A table with 300 rows, distinct scores and states, written at steps 1..3.
void fill(DynamicTable& t) {
  std::vector<uint64_t> keys(300);
  for (int i = 0; i < 300; ++i) keys[i] = 1000003ull * i + 17;
  std::vector<float> out(300 * 6);
  t.set_step(1);
  t.find_or_insert(keys.data(), 300, out.data());
  t.find_or_insert(keys.data(), 100, out.data());
  Philox rng(1);
  std::vector<float> grads(300 * 6);
  for (auto& g : grads) g = rng.normal();
  SparseOptimizer opt(SparseOptimizerConfig{});
  t.set_step(2);
  opt.step(t, keys.data(), grads.data(), 150);
  t.set_step(3);
  opt.step(t, keys.data() + 140, grads.data(), 20);
}

void expect_equal(const TableRows& a, const TableRows& b) {
  EXPECT_EQ(a.keys, b.keys);
  ASSERT_EQ(a.values.size(), b.values.size());
  ASSERT_EQ(a.states.size(), b.states.size());
  EXPECT_EQ(0, std::memcmp(a.values.data(), b.values.data(), 4 * a.values.size()));
  EXPECT_EQ(0, std::memcmp(a.states.data(), b.states.data(), 4 * a.states.size()));
  EXPECT_EQ(a.scores, b.scores);
  EXPECT_EQ(a.stamps, b.stamps);
}

TEST(EmbeddingDump, FullRoundTripIsExact) {
  test::TempDir dir("genrec_emb_dump_");
  DynamicTable t(adam_options());
  fill(t);
  const std::string path = dir.file("table.gre");
  EXPECT_EQ(dump_table(t, path), 300);
  DynamicTable u(adam_options());
  TableDumpInfo info = load_table(u, path);
  EXPECT_FALSE(info.incremental);
  EXPECT_EQ(info.count, 300);
  EXPECT_EQ(info.step, 3u);
  EXPECT_EQ(info.state_dim, 13);
  TableRows a = t.export_rows(), b = u.export_rows();
  expect_equal(a, b);
  // Some state is non-trivial (so the comparison means something).
  EXPECT_NE(a.states[0], 0.0f);
  // Only the final file remains (the temporary was renamed).
  int files = 0;
  for (auto& e : fs::directory_iterator(dir.path)) files += e.is_regular_file();
  EXPECT_EQ(files, 1);
}

TEST(EmbeddingDump, IncrementalDumpHoldsRowsWrittenAfterStamp) {
  test::TempDir dir("genrec_emb_dump_");
  DynamicTable t(adam_options());
  fill(t);
  const std::string full = dir.file("full.gre"), inc = dir.file("inc.gre");
  dump_table(t, full);
  // Step 4 writes 10 rows (5 existing, 5 new).
  std::vector<uint64_t> keys = {17, 1000020, 2000023, 3000026, 4000029, 1, 2, 3, 4, 5};
  std::vector<float> values(10 * 6, 2.5f);
  t.set_step(4);
  t.insert_or_assign(keys.data(), values.data(), 10);
  EXPECT_EQ(dump_table_since(t, inc, 3), 10);
  TableDump d = read_table_dump(inc);
  EXPECT_TRUE(d.info.incremental);
  EXPECT_EQ(d.info.since_stamp, 3u);
  std::vector<uint64_t> want = keys;
  std::sort(want.begin(), want.end());
  EXPECT_EQ(d.rows.keys, want);
  // Rows stamped 2 or 3 (the optimizer steps) and only those.
  TableDump since1 = read_table_dump((dump_table_since(t, inc, 1), inc));
  EXPECT_EQ(since1.info.count, 160 + 5);
  // full + incremental restores the table.
  dump_table_since(t, inc, 3);
  DynamicTable u(adam_options());
  load_table(u, full);
  load_table(u, inc);
  expect_equal(u.export_rows(), t.export_rows());
}

// Keys erased or evicted after the full dump leave tombstones in the incremental dump, so the
// restored table lacks them too; a key removed and written again is a row, not a tombstone.
TEST(EmbeddingDump, IncrementalDumpCarriesTheRemovedKeys) {
  test::TempDir dir("genrec_emb_dump_");
  TableOptions bounded = adam_options();
  bounded.max_capacity = 300;
  DynamicTable t(bounded);
  fill(t);
  const std::string full = dir.file("full.gre"), inc = dir.file("inc.gre");
  dump_table(t, full);
  const TableRows before = t.export_rows();
  t.set_step(4);
  const std::vector<uint64_t> erased = {17, 1000020, 2000023, 3000026};
  EXPECT_EQ(t.erase(erased.data(), 4), 4);
  // 40 new keys: 4 take the erased rows' room, 36 evict rows of the full dump.
  std::vector<uint64_t> fresh(40);
  for (int i = 0; i < 40; ++i) fresh[i] = 2 + 2 * static_cast<uint64_t>(i);
  std::vector<float> out(40 * 6);
  t.find_or_insert(fresh.data(), 40, out.data());
  EXPECT_EQ(t.size(), 300);
  t.set_step(5);
  std::vector<float> values(6, 1.5f);
  t.insert_or_assign(&erased[0], values.data(), 1);  // back (evicting one more), so a row
  dump_table_since(t, inc, 3);
  const TableDump d = read_table_dump(inc);
  std::vector<uint64_t> gone;  // rows of the full dump the table no longer has
  for (uint64_t key : before.keys) {
    if (!t.contains(key)) gone.push_back(key);
  }
  EXPECT_GE(gone.size(), 3u + 36u);
  for (uint64_t key : gone) {
    EXPECT_TRUE(std::binary_search(d.removed.begin(), d.removed.end(), key)) << key;
  }
  for (uint64_t key : d.removed) EXPECT_FALSE(t.contains(key)) << key;
  EXPECT_FALSE(std::binary_search(d.removed.begin(), d.removed.end(), erased[0]));
  DynamicTable u(bounded);
  load_table(u, full);
  load_table(u, inc);
  expect_equal(u.export_rows(), t.export_rows());
  // Forgotten removals are no longer written.
  t.forget_removals(5);
  dump_table_since(t, inc, 3);
  EXPECT_TRUE(read_table_dump(inc).removed.empty());
}

// Version 1 files (before tombstones: the field at offset 56 was reserved, 0) still load.
TEST(EmbeddingDump, VersionOneFilesLoad) {
  test::TempDir dir("genrec_emb_dump_");
  DynamicTable t(adam_options());
  fill(t);
  std::string bytes = table_dump_bytes(t);  // the bytes dump_table writes
  ASSERT_EQ(bytes[8], 2);
  bytes[8] = 1;
  const uint64_t sum = XXH64(bytes.data(), bytes.size() - 8, 0);
  std::memcpy(&bytes[bytes.size() - 8], &sum, 8);
  std::ofstream(dir.file("v1.gre"), std::ios::binary) << bytes;
  DynamicTable u(adam_options());
  EXPECT_EQ(load_table(u, dir.file("v1.gre")).version, 1u);
  expect_equal(u.export_rows(), t.export_rows());
}

TEST(EmbeddingDump, CorruptionAndTruncationAreDetected) {
  test::TempDir dir("genrec_emb_dump_");
  DynamicTable t(adam_options());
  fill(t);
  const std::string path = dir.file("t.gre");
  dump_table(t, path);
  const std::string bytes = table_dump_bytes(t);  // the file's bytes
  auto write = [&](const std::string& name, const std::string& content) {
    std::ofstream(dir.file(name), std::ios::binary) << content;
    return dir.file(name);
  };
  auto error_of = [](const std::string& p) -> std::string {
    try {
      read_table_dump(p);
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  std::string flipped = bytes;
  flipped[64 + 24 * 3 + 5] ^= 0x10;  // inside the rows
  std::string p = write("flipped.gre", flipped);
  EXPECT_NE(error_of(p).find("checksum mismatch"), std::string::npos) << error_of(p);
  EXPECT_NE(error_of(p).find(p), std::string::npos) << "names the file";
  p = write("trunc.gre", bytes.substr(0, bytes.size() - 100));
  EXPECT_NE(error_of(p).find("truncated"), std::string::npos) << error_of(p);
  p = write("short.gre", bytes.substr(0, 30));
  EXPECT_NE(error_of(p).find("truncated"), std::string::npos) << error_of(p);
  p = write("long.gre", bytes + "xx");
  EXPECT_NE(error_of(p).find("trailing"), std::string::npos) << error_of(p);
  std::string magic = bytes;
  magic[0] = 'X';
  p = write("magic.gre", magic);
  EXPECT_NE(error_of(p).find("bad magic"), std::string::npos) << error_of(p);
  EXPECT_NE(error_of(dir.file("absent.gre")).find("cannot open"), std::string::npos);
  // A failed load leaves the table untouched.
  DynamicTable u(adam_options());
  EXPECT_THROW(load_table(u, dir.file("flipped.gre")), Error);
  EXPECT_EQ(u.size(), 0);
  // Layout mismatch.
  TableOptions other = adam_options();
  other.optimizer = OptimizerState::kAdagrad;
  DynamicTable w(other);
  EXPECT_THROW(load_table(w, path), Error);
}

}  // namespace
}  // namespace genrec
