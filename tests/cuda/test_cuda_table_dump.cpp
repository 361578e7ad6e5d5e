// Dumps of a CudaDynamicTable in the CPU table's file format. The same writes go to a CUDA table
// and a CPU DynamicTable, so their dumps must be the same bytes; a full dump loads into either
// table with identical rows (values, optimizer states, scores, stamps), an incremental dump holds
// exactly the rows written since its stamp and restores the final table on top of the full dump,
// a CPU table's dumps load into a CUDA table, a CudaTieredTable's dumps restore both of its tiers,
// incremental dumps carry the keys the tables removed as tombstones (and restore without them),
// and bad files are refused.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "../temp_dir.h"
#include "core/cuda/stream.h"
#include "core/error.h"
#include "core/philox.h"
#include "cuda_test_util.h"
#include "embedding/cuda/cuda_dynamic_table.h"
#include "embedding/cuda/cuda_table_dump.h"
#include "embedding/cuda/cuda_tiered_table.h"
#include "embedding/dynamic_table.h"
#include "embedding/sparse_optimizer.h"
#include "embedding/table_dump.h"

namespace genrec {
namespace {

using cuda::CudaDynamicTable;
using cuda::CudaTableOptions;
using test::poisoned;
using test::upload_raw;

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

constexpr int64_t kDim = 6;

// Adam state (so rows carry 2 dim + 1 state floats), LFU scores, 32 buckets: the test's 300 keys
// never fill one. max_hbm_row_bytes >= 0 puts part of the rows in host memory.
CudaTableOptions gpu_options(int64_t dim = kDim, int64_t max_hbm_row_bytes = -1) {
  CudaTableOptions opt;
  opt.dim = dim;
  opt.optimizer = OptimizerState::kAdam;
  opt.initializer = {InitKind::kUniform, 0.3f, 5};
  opt.capacity = 4096;
  opt.eviction = EvictionPolicy::kLfu;
  opt.max_hbm_row_bytes = max_hbm_row_bytes;
  return opt;
}

TableOptions cpu_options(int64_t dim = kDim) {
  const CudaTableOptions g = gpu_options(dim);
  TableOptions opt;
  opt.dim = dim;
  opt.optimizer = g.optimizer;
  opt.initializer = g.initializer;
  opt.eviction = g.eviction;
  opt.num_shards = 4;
  return opt;
}

// scores_of (optional): compare the scores of these keys only. A full dump followed by an
// incremental one restores the rows written since the full dump exactly; the others keep the
// full dump's score, which reads (LFU counts, LRU steps) may have moved since.
void expect_same_rows(const TableRows& a, const TableRows& b, const char* where,
                      const std::set<uint64_t>* scores_of = nullptr) {
  ASSERT_EQ(a.keys, b.keys) << where;
  if (scores_of == nullptr) {
    EXPECT_EQ(a.scores, b.scores) << where;
  } else {
    for (size_t r = 0; r < a.keys.size(); ++r) {
      if (scores_of->count(a.keys[r]) != 0) {
        EXPECT_EQ(a.scores[r], b.scores[r]) << where << ": key " << a.keys[r];
      }
    }
  }
  EXPECT_EQ(a.stamps, b.stamps) << where;
  ASSERT_EQ(a.values.size(), b.values.size()) << where;
  ASSERT_EQ(a.states.size(), b.states.size()) << where;
  EXPECT_EQ(0, std::memcmp(a.values.data(), b.values.data(), 4 * a.values.size())) << where;
  EXPECT_EQ(0, std::memcmp(a.states.data(), b.states.data(), 4 * a.states.size())) << where;
}

// find_or_insert of host keys; returns the stored flags.
std::vector<uint8_t> find_or_insert(CudaDynamicTable& table, const std::vector<uint64_t>& keys,
                                    cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(keys.size());
  auto d_keys = upload_raw(keys);
  auto d_out = poisoned<float>(n * table.dim());
  auto d_stored = poisoned<uint8_t>(n);
  table.find_or_insert(d_keys.get(), n, d_out.get(), d_stored.get(), stream);
  return d_stored.download_raw();
}

// The keys of `from` (sorted) that `to` (sorted) lacks.
std::vector<uint64_t> keys_missing(const TableRows& from, const TableRows& to) {
  std::vector<uint64_t> missing;
  std::set_difference(from.keys.begin(), from.keys.end(), to.keys.begin(), to.keys.end(),
                      std::back_inserter(missing));
  return missing;
}

std::vector<uint64_t> draw_keys(int64_t n, Philox& rng) {
  std::vector<uint64_t> keys(n);
  for (auto& k : keys) k = 1 + rng.below(300) * 7919;
  return keys;
}

// One step of writes, the same on both tables (on the CPU one alone without gpu):
// find_or_insert (new and present keys, duplicates), insert_or_assign, assign (some keys absent)
// and insert_rows of whole rows (Adam state of their own, scores, the step as stamp). Returns the
// keys whose rows the step wrote.
std::set<uint64_t> write_step(CudaDynamicTable* gpu, DynamicTable& cpu, uint64_t step, Philox& rng,
                              cudaStream_t stream) {
  if (gpu != nullptr) gpu->set_step(step);
  cpu.set_step(step);
  const int64_t dim = cpu.dim(), sd = cpu.state_dim();
  std::set<uint64_t> written;
  {
    const auto keys = draw_keys(40, rng);
    for (uint64_t k : keys) {
      if (!cpu.contains(k)) written.insert(k);
    }
    std::vector<float> out(40 * dim);
    cpu.find_or_insert(keys.data(), 40, out.data());
    if (gpu != nullptr) {
      auto d_keys = upload_raw(keys);
      auto d_out = poisoned<float>(40 * dim);
      gpu->find_or_insert(d_keys.get(), 40, d_out.get(), nullptr, stream);
      EXPECT_EQ(d_out.download_raw(), out);
    }
  }
  for (const bool insert : {true, false}) {
    const auto keys = draw_keys(20, rng);
    std::vector<float> values(20 * dim);
    for (auto& v : values) v = rng.uniform();
    if (insert) {
      written.insert(keys.begin(), keys.end());
    } else {
      for (uint64_t k : keys) {
        if (cpu.contains(k)) written.insert(k);
      }
    }
    if (gpu != nullptr) {
      auto d_keys = upload_raw(keys);
      auto d_values = upload_raw(values);
      if (insert) {
        gpu->insert_or_assign(d_keys.get(), d_values.get(), 20, stream);
      } else {
        gpu->assign(d_keys.get(), d_values.get(), 20, stream);
      }
    }
    if (insert) {
      cpu.insert_or_assign(keys.data(), values.data(), 20);
    } else {
      cpu.assign(keys.data(), values.data(), 20);
    }
  }
  std::set<uint64_t> distinct;
  while (distinct.size() < 10) distinct.insert(draw_keys(1, rng)[0]);
  TableRows rows;
  rows.keys.assign(distinct.begin(), distinct.end());
  rows.values.resize(10 * dim);
  rows.states.resize(10 * sd);
  rows.scores.resize(10);
  rows.stamps.assign(10, step);
  for (auto& v : rows.values) v = rng.uniform();
  for (auto& v : rows.states) v = rng.uniform();
  for (auto& s : rows.scores) s = rng.below(50);
  written.insert(rows.keys.begin(), rows.keys.end());
  if (gpu != nullptr) {
    auto d_keys = upload_raw(rows.keys);
    auto d_values = upload_raw(rows.values);
    auto d_states = upload_raw(rows.states);
    auto d_scores = upload_raw(rows.scores);
    auto d_stamps = upload_raw(rows.stamps);
    gpu->insert_rows(d_keys.get(), d_values.get(), d_states.get(), d_scores.get(), 10, stream,
                     nullptr, nullptr, nullptr, 0, d_stamps.get());
  }
  cpu.insert_rows(rows);
  return written;
}

TEST(CudaTableDump, FullDumpLoadsIntoCpuAndCudaTables) {
  GENREC_REQUIRE_CUDA();
  test::TempDir dir("genrec_cuda_dump_");
  CudaDynamicTable gpu(gpu_options());
  DynamicTable cpu(cpu_options());
  cuda::Stream stream;
  Philox rng(3);
  for (uint64_t step = 1; step <= 6; ++step) write_step(&gpu, cpu, step, rng, stream);
  const TableRows want = gpu.export_rows(0, stream);
  expect_same_rows(want, cpu.export_rows(), "the tables before the dump");
  std::set<uint64_t> stamps(want.stamps.begin(), want.stamps.end());
  ASSERT_GE(stamps.size(), 4u) << "rows of several steps";

  const std::string path = dir.file("gpu.gre"), cpu_path = dir.file("cpu.gre");
  EXPECT_EQ(cuda::dump_table(gpu, path, stream), want.size());
  dump_table(cpu, cpu_path);
  EXPECT_EQ(file_bytes(path), file_bytes(cpu_path)) << "one format, the same rows";
  const TableDump dump = read_table_dump(path);
  EXPECT_FALSE(dump.info.incremental);
  EXPECT_EQ(dump.info.count, want.size());
  EXPECT_EQ(dump.info.step, 6u);
  EXPECT_EQ(dump.info.dim, kDim);
  EXPECT_EQ(dump.info.state_dim, 2 * kDim + 1);
  EXPECT_EQ(dump.info.eviction, EvictionPolicy::kLfu);

  DynamicTable on_cpu(cpu_options());
  load_table(on_cpu, path);
  expect_same_rows(on_cpu.export_rows(), want, "CUDA dump -> CPU table");
  CudaDynamicTable on_gpu(gpu_options());
  const TableDumpInfo info = cuda::load_table(on_gpu, path, stream);
  EXPECT_EQ(info.count, want.size());
  EXPECT_EQ(on_gpu.step(), 0u) << "a load leaves the step alone";
  expect_same_rows(on_gpu.export_rows(0, stream), want, "CUDA dump -> CUDA table");
  // Part of the rows in host memory: 4 device rows per bucket.
  const int64_t row_bytes = (kDim + 2 * kDim + 1 + 3) / 4 * 4 * 4;
  CudaDynamicTable split(gpu_options(kDim, 32 * 4 * row_bytes));
  ASSERT_GT(split.host_slots(), 0);
  cuda::load_table(split, path, stream);
  expect_same_rows(split.export_rows(0, stream), want, "CUDA dump -> CUDA table with host rows");
}

TEST(CudaTableDump, IncrementalDumpHoldsRowsWrittenSince) {
  GENREC_REQUIRE_CUDA();
  test::TempDir dir("genrec_cuda_dump_");
  CudaDynamicTable gpu(gpu_options());
  DynamicTable cpu(cpu_options());
  cuda::Stream stream;
  Philox rng(4);
  for (uint64_t step = 1; step <= 4; ++step) write_step(&gpu, cpu, step, rng, stream);
  const std::string full = dir.file("full.gre"), inc = dir.file("inc.gre");
  cuda::dump_table(gpu, full, stream);
  std::set<uint64_t> written;
  for (uint64_t step = 5; step <= 7; ++step) {
    const std::set<uint64_t> w = write_step(&gpu, cpu, step, rng, stream);
    written.insert(w.begin(), w.end());
  }
  const TableRows final_rows = gpu.export_rows(0, stream);
  ASSERT_LT(written.size(), static_cast<size_t>(final_rows.size())) << "older rows stay out";

  EXPECT_EQ(cuda::dump_table_since(gpu, inc, 4, stream), static_cast<int64_t>(written.size()));
  const TableDump d = read_table_dump(inc);
  EXPECT_TRUE(d.info.incremental);
  EXPECT_EQ(d.info.since_stamp, 4u);
  EXPECT_EQ(d.info.step, 7u);
  EXPECT_EQ(d.rows.keys, std::vector<uint64_t>(written.begin(), written.end()));
  for (uint64_t s : d.rows.stamps) EXPECT_GT(s, 4u);
  const std::string cpu_inc = dir.file("cpu_inc.gre");
  dump_table_since(cpu, cpu_inc, 4);
  EXPECT_EQ(file_bytes(inc), file_bytes(cpu_inc)) << "the CPU table's incremental dump";
  EXPECT_EQ(cuda::dump_table_since(gpu, dir.file("none.gre"), 7, stream), 0);
  EXPECT_EQ(cuda::dump_table_since(gpu, dir.file("none.gre"), std::numeric_limits<uint64_t>::max(),
                                   stream),
            0);

  // Full + incremental restores the final table, into either table.
  CudaDynamicTable on_gpu(gpu_options());
  cuda::load_table(on_gpu, full, stream);
  EXPECT_TRUE(cuda::load_table(on_gpu, inc, stream).incremental);
  expect_same_rows(on_gpu.export_rows(0, stream), final_rows, "full + incremental -> CUDA",
                   &written);
  DynamicTable on_cpu(cpu_options());
  load_table(on_cpu, full);
  load_table(on_cpu, inc);
  expect_same_rows(on_cpu.export_rows(), final_rows, "full + incremental -> CPU", &written);
}

// Removals after a full dump, every way a one-bucket table (128 rows) has: erase, evictions by
// find_or_insert, insert_or_assign and insert_rows, and an erased key put back. The incremental
// dump's tombstones are exactly the full dump's keys the table no longer holds, and the full dump
// plus the incremental one restore the table exactly (keys, values, states, scores, stamps), into
// a CUDA table and into a CPU table: without the tombstones both would keep rows the table lost
// (the one-bucket table would evict others to make room).
TEST(CudaTableDump, IncrementalDumpCarriesTheRemovedKeys) {
  GENREC_REQUIRE_CUDA();
  test::TempDir dir("genrec_cuda_dump_");
  CudaTableOptions opt = gpu_options();
  opt.capacity = 128;
  opt.eviction = EvictionPolicy::kLru;
  CudaDynamicTable gpu(opt);
  ASSERT_EQ(gpu.capacity(), 128);
  cuda::Stream stream;
  Philox rng(9);
  const int64_t sd = gpu.state_dim();
  // Whole rows of distinct keys with optimizer states of their own and LRU scores 1 to 3.
  auto rows_of = [&](uint64_t first, int64_t n, uint64_t step) {
    TableRows rows;
    for (int64_t i = 0; i < n; ++i) {
      rows.keys.push_back(first + i);
      rows.scores.push_back(1 + i % 3);
    }
    rows.values.resize(n * kDim);
    rows.states.resize(n * sd);
    for (auto& v : rows.values) v = rng.uniform();
    for (auto& v : rows.states) v = rng.uniform();
    rows.stamps.assign(n, step);
    return rows;
  };
  auto keys_from = [](uint64_t first, int n) {
    std::vector<uint64_t> keys(n);
    std::iota(keys.begin(), keys.end(), first);
    return keys;
  };
  // Steps 1 and 2 fill the bucket: 120 whole rows, then 8 new keys (LRU score 2).
  gpu.set_step(1);
  ASSERT_EQ(gpu.insert_rows(rows_of(1000, 120, 1), stream), 120);
  gpu.set_step(2);
  EXPECT_EQ(find_or_insert(gpu, keys_from(5000, 8), stream), std::vector<uint8_t>(8, 1));
  ASSERT_EQ(gpu.size(stream), 128);
  const std::string full = dir.file("full.gre"), inc = dir.file("inc.gre");
  cuda::dump_table(gpu, full, stream);
  const TableRows before = gpu.export_rows(0, stream);

  // Step 3: 3 rows erased (9999 is absent); 20 new keys, 3 in their room and 17 evicting rows of
  // score 1 (the 39 left of the 40 full-dump rows with score 1 are the lowest).
  gpu.set_step(3);
  auto d_erase = upload_raw(std::vector<uint64_t>{1000, 1001, 5000, 9999});
  auto d_erased = poisoned<uint8_t>(4);
  gpu.erase(d_erase.get(), 4, stream, d_erased.get());
  EXPECT_EQ(d_erased.download_raw(), (std::vector<uint8_t>{1, 1, 1, 0}));
  EXPECT_EQ(find_or_insert(gpu, keys_from(6000, 20), stream), std::vector<uint8_t>(20, 1));
  const TableRows mid = gpu.export_rows(0, stream);
  // Step 4: 1000 comes back (insert_or_assign), and 3 whole rows (insert_rows): 4 evictions.
  gpu.set_step(4);
  auto d_back = upload_raw(std::vector<uint64_t>{1000});
  auto d_back_values = upload_raw(std::vector<float>(kDim, 1.5f));
  auto d_back_stored = poisoned<uint8_t>(1);
  gpu.insert_or_assign(d_back.get(), d_back_values.get(), 1, stream, d_back_stored.get());
  EXPECT_EQ(d_back_stored.download_raw(), std::vector<uint8_t>{1});
  const TableRows extra = rows_of(7000, 3, 4);
  auto d_keys = upload_raw(extra.keys);
  auto d_values = upload_raw(extra.values);
  auto d_states = upload_raw(extra.states);
  auto d_scores = upload_raw(extra.scores);
  auto d_stamps = upload_raw(extra.stamps);
  auto d_stored = poisoned<uint8_t>(3);
  gpu.insert_rows(d_keys.get(), d_values.get(), d_states.get(), d_scores.get(), 3, stream,
                  d_stored.get(), nullptr, nullptr, 0, d_stamps.get());
  EXPECT_EQ(d_stored.download_raw(), std::vector<uint8_t>(3, 1));
  const TableRows live = gpu.export_rows(0, stream);
  ASSERT_EQ(live.size(), 128);

  const std::vector<uint64_t> gone = keys_missing(before, live);
  EXPECT_EQ(gone.size(), 2u + 17u + 1u + 3u) << "1001 and 5000 erased, 21 rows evicted";
  std::vector<uint64_t> removed = gone;
  removed.insert(std::upper_bound(removed.begin(), removed.end(), 1000), 1000);  // back now
  EXPECT_EQ(gpu.removed_since(2, stream), removed);
  const std::vector<uint64_t> at_step_4 = keys_missing(mid, live);
  EXPECT_EQ(at_step_4.size(), 4u);
  EXPECT_EQ(gpu.removed_since(3, stream), at_step_4);

  EXPECT_EQ(cuda::dump_table_since(gpu, inc, 2, stream), 20 + 1 + 3);
  EXPECT_EQ(read_table_dump(inc).removed, gone);
  CudaDynamicTable on_gpu(opt);
  cuda::load_table(on_gpu, full, stream);
  cuda::load_table(on_gpu, inc, stream);
  expect_same_rows(on_gpu.export_rows(0, stream), live, "full + incremental -> CUDA");
  TableOptions copt = cpu_options();
  copt.eviction = EvictionPolicy::kLru;
  DynamicTable on_cpu(copt);
  load_table(on_cpu, full);
  load_table(on_cpu, inc);
  expect_same_rows(on_cpu.export_rows(), live, "full + incremental -> CPU");

  // Forgotten removals are no longer written.
  gpu.forget_removals(3, stream);
  EXPECT_EQ(gpu.removed_since(0, stream), at_step_4);
  cuda::dump_table_since(gpu, inc, 2, stream);
  EXPECT_EQ(read_table_dump(inc).removed, at_step_4);
  gpu.forget_removals(4, stream);
  cuda::dump_table_since(gpu, inc, 2, stream);
  EXPECT_TRUE(read_table_dump(inc).removed.empty());
}

// A table without a removal log (log_removals off) writes no tombstones for the same removals.
TEST(CudaTableDump, NoTombstonesWithoutTheRemovalLog) {
  GENREC_REQUIRE_CUDA();
  test::TempDir dir("genrec_cuda_dump_");
  CudaTableOptions opt = gpu_options();
  opt.capacity = 128;
  opt.log_removals = false;
  CudaDynamicTable gpu(opt);
  cuda::Stream stream;
  std::vector<uint64_t> keys(128);
  std::iota(keys.begin(), keys.end(), 1);
  gpu.set_step(1);
  find_or_insert(gpu, keys, stream);
  gpu.set_step(2);
  gpu.erase(std::vector<uint64_t>{1, 2}, stream);
  EXPECT_EQ(find_or_insert(gpu, {501, 502, 503, 504, 505}, stream), std::vector<uint8_t>(5, 1));
  EXPECT_EQ(gpu.size(stream), 128) << "3 rows evicted";
  EXPECT_TRUE(gpu.removed_since(0, stream).empty());
  const std::string inc = dir.file("inc.gre");
  EXPECT_EQ(cuda::dump_table_since(gpu, inc, 1, stream), 5);
  EXPECT_TRUE(read_table_dump(inc).removed.empty());
}

// A CPU table's dumps (rows stamped by its writes and by optimizer updates) load into a CUDA
// table: a full dump, and a full dump followed by an incremental one.
TEST(CudaTableDump, CpuDumpsLoadIntoCudaTable) {
  GENREC_REQUIRE_CUDA();
  test::TempDir dir("genrec_cuda_dump_");
  DynamicTable cpu(cpu_options());
  cuda::Stream stream;
  Philox rng(5);
  SparseOptimizer optimizer(SparseOptimizerConfig{});
  auto steps = [&](uint64_t first, uint64_t last) {
    for (uint64_t step = first; step <= last; ++step) {
      write_step(nullptr, cpu, step, rng, stream);
      const auto keys = draw_keys(15, rng);
      std::vector<float> grads(15 * kDim);
      for (auto& g : grads) g = rng.uniform() - 0.5f;
      optimizer.step(cpu, keys.data(), grads.data(), 15);  // stamps the rows with the step
    }
  };
  steps(1, 3);
  const std::string full = dir.file("full.gre"), inc = dir.file("inc.gre");
  dump_table(cpu, full);
  CudaDynamicTable from_full(gpu_options());
  cuda::load_table(from_full, full, stream);
  expect_same_rows(from_full.export_rows(0, stream), cpu.export_rows(), "CPU full dump");
  steps(4, 5);
  dump_table_since(cpu, inc, 3);
  cuda::load_table(from_full, inc, stream);
  const std::vector<uint64_t> since = read_table_dump(inc).rows.keys;
  const std::set<uint64_t> written(since.begin(), since.end());
  EXPECT_FALSE(written.empty());
  expect_same_rows(from_full.export_rows(0, stream), cpu.export_rows(), "CPU full + incremental",
                   &written);
}

// A CudaTieredTable whose hot tier is one bucket, so that lookups move rows between its tiers.
std::unique_ptr<cuda::CudaTieredTable> one_bucket_tiered_table() {
  CudaTableOptions hot = gpu_options();
  hot.capacity = 128;
  return std::make_unique<cuda::CudaTieredTable>(hot, cpu_options());
}
constexpr int64_t kTieredBatch = 48;  // under a bucket: every key of a batch is in hot after it

// Looks keys up at `step` (rows move between the tiers), then rewrites their rows in hot with
// random values (new values and stamps).
void look_up_and_rewrite(cuda::CudaTieredTable& t, uint64_t step, const std::vector<uint64_t>& keys,
                         Philox& rng, cudaStream_t stream) {
  t.set_step(step);
  const int64_t n = static_cast<int64_t>(keys.size());
  std::vector<float> values(n * kDim);
  for (auto& v : values) v = rng.uniform();
  auto d_keys = upload_raw(keys);
  auto d_out = poisoned<float>(n * kDim);
  auto d_values = upload_raw(values);
  t.find_or_insert(d_keys.get(), n, d_out.get(), nullptr, stream);
  t.hot().assign(d_keys.get(), d_values.get(), n, stream);
}

// A CudaTieredTable's dumps hold both tiers. Random lookups move rows between a one-bucket hot
// tier and host, and every looked-up row is then rewritten in hot (values and stamp), so a full
// dump taken halfway plus an incremental dump at the end, and a full dump at the end, must each
// restore every row exactly into an empty table; loading over the table itself must leave each
// key in one tier.
TEST(CudaTableDump, TieredTableRoundTrip) {
  GENREC_REQUIRE_CUDA();
  cuda::Stream stream;
  test::TempDir dir("genrec_cuda_tiered_dump_");
  auto table = one_bucket_tiered_table();
  cuda::CudaTieredTable& t = *table;
  Philox rng(43);
  constexpr uint64_t kHalf = 20, kSteps = 40;
  for (uint64_t step = 1; step <= kSteps; ++step) {
    look_up_and_rewrite(t, step, draw_keys(kTieredBatch, rng), rng, stream);
    if (step == kHalf) {
      EXPECT_GT(cuda::dump_table(t, dir.file("half.dump"), stream), 0);
    }
  }
  const TableRows want = t.export_rows(stream);
  ASSERT_GT(t.host().size(), 0) << "no row left hot";
  EXPECT_LT(cuda::dump_table_since(t, dir.file("since.dump"), kHalf, stream), want.size());
  EXPECT_EQ(cuda::dump_table(t, dir.file("all.dump"), stream), want.size());

  auto from_full = one_bucket_tiered_table();
  cuda::load_table(*from_full, dir.file("all.dump"), stream);
  expect_same_rows(from_full->export_rows(stream), want, "full dump");
  EXPECT_EQ(from_full->size(stream), want.size());

  auto from_increments = one_bucket_tiered_table();
  cuda::load_table(*from_increments, dir.file("half.dump"), stream);
  EXPECT_TRUE(cuda::load_table(*from_increments, dir.file("since.dump"), stream).incremental);
  expect_same_rows(from_increments->export_rows(stream), want, "half + incremental dump");

  // Loading over rows that exist (many in hot) replaces them, one tier per key.
  cuda::load_table(t, dir.file("half.dump"), stream);
  cuda::load_table(t, dir.file("since.dump"), stream);
  EXPECT_EQ(t.size(stream), want.size());
  expect_same_rows(t.export_rows(stream), want, "loaded over itself");
}

// A CudaTieredTable logs the keys that leave it (erase), never the rows moving between its tiers
// (the tiers log nothing). Lookups move rows both ways around an erase of keys of either tier
// (one of them put back later, one key in no tier), and a full dump before the erase plus an
// incremental dump at the end restore the table exactly, into a CudaTieredTable and into a CPU
// table; every looked-up row is rewritten in hot (values and stamp), as in TieredTableRoundTrip.
TEST(CudaTableDump, TieredTableDumpCarriesErasedKeys) {
  GENREC_REQUIRE_CUDA();
  cuda::Stream stream;
  test::TempDir dir("genrec_cuda_tiered_dump_");
  auto table = one_bucket_tiered_table();
  cuda::CudaTieredTable& t = *table;
  Philox rng(44);
  auto lookup = [&](uint64_t step, const std::vector<uint64_t>& keys) {
    look_up_and_rewrite(t, step, keys, rng, stream);
  };
  for (uint64_t step = 1; step <= 10; ++step) lookup(step, draw_keys(kTieredBatch, rng));
  const std::string full = dir.file("full.dump"), inc = dir.file("inc.dump");
  cuda::dump_table(t, full, stream);

  // Step 11: 3 keys of hot and 3 of host erased, with a repeat and a key in no tier (draw_keys
  // never makes 2).
  const TableRows in_hot = t.hot().export_rows(0, stream), in_host = t.host().export_rows();
  ASSERT_GE(in_hot.size(), 3);
  ASSERT_GE(in_host.size(), 3);
  std::vector<uint64_t> erased(in_hot.keys.begin(), in_hot.keys.begin() + 3);
  erased.insert(erased.end(), in_host.keys.begin(), in_host.keys.begin() + 3);
  std::vector<uint64_t> batch = erased;
  batch.push_back(2);
  batch.push_back(erased[0]);
  const int64_t size_before = t.size(stream);
  t.set_step(11);
  t.erase(batch, stream);
  EXPECT_EQ(t.size(stream), size_before - 6);
  // Steps 12 to 14: the first erased key comes back, the others stay out.
  const std::set<uint64_t> out(erased.begin() + 1, erased.end());
  for (uint64_t step = 12; step <= 14; ++step) {
    std::vector<uint64_t> keys = draw_keys(kTieredBatch, rng);
    std::erase_if(keys, [&](uint64_t k) { return out.count(k) != 0; });
    if (step == 12) keys.push_back(erased[0]);
    lookup(step, keys);
  }
  EXPECT_GT(t.stats().demoted, 0) << "hot evicted rows to host";
  std::sort(erased.begin(), erased.end());
  EXPECT_EQ(t.removed_since(10), erased) << "what left the table, once each";
  EXPECT_TRUE(t.removed_since(11).empty());
  EXPECT_TRUE(t.hot().removed_since(0, stream).empty()) << "the tiers log nothing";
  EXPECT_TRUE(t.host().removed_since(0).empty());

  const TableRows live = t.export_rows(stream);
  cuda::dump_table_since(t, inc, 10, stream);
  EXPECT_EQ(read_table_dump(inc).removed, std::vector<uint64_t>(out.begin(), out.end()));
  auto restored = one_bucket_tiered_table();
  cuda::load_table(*restored, full, stream);
  cuda::load_table(*restored, inc, stream);
  expect_same_rows(restored->export_rows(stream), live, "full + incremental -> tiered");
  DynamicTable on_cpu(cpu_options());
  load_table(on_cpu, full);
  load_table(on_cpu, inc);
  expect_same_rows(on_cpu.export_rows(), live, "full + incremental -> CPU");
  t.forget_removals(11);
  EXPECT_TRUE(t.removed_since(0).empty());
}

TEST(CudaTableDump, BadFilesAreRefused) {
  GENREC_REQUIRE_CUDA();
  test::TempDir dir("genrec_cuda_dump_");
  auto error_of = [](auto&& load) -> std::string {
    try {
      load();
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  cuda::Stream stream;
  CudaDynamicTable gpu(gpu_options());
  // Another dim.
  DynamicTable other(cpu_options(kDim - 1));
  std::vector<uint64_t> keys = {1, 2, 3};
  std::vector<float> out(3 * (kDim - 1));
  other.find_or_insert(keys.data(), 3, out.data());
  const std::string other_path = dir.file("other.gre");
  dump_table(other, other_path);
  std::string e = error_of([&] { cuda::load_table(gpu, other_path, stream); });
  EXPECT_NE(e.find("does not match"), std::string::npos) << e;
  EXPECT_NE(e.find(other_path), std::string::npos) << "names the file: " << e;
  EXPECT_EQ(gpu.size(stream), 0);
  // A corrupt file.
  DynamicTable cpu(cpu_options());
  Philox rng(6);
  write_step(nullptr, cpu, 1, rng, stream);
  const std::string path = dir.file("t.gre"), bad = dir.file("bad.gre");
  dump_table(cpu, path);
  std::string bytes = file_bytes(path);
  bytes[64 + 30] ^= 0x04;
  std::ofstream(bad, std::ios::binary) << bytes;
  e = error_of([&] { cuda::load_table(gpu, bad, stream); });
  EXPECT_NE(e.find("checksum mismatch"), std::string::npos) << e;
  EXPECT_EQ(gpu.size(stream), 0);
  // More rows than one 128-slot bucket holds.
  CudaTableOptions small = gpu_options();
  small.capacity = 128;
  CudaDynamicTable one_bucket(small);
  DynamicTable many(cpu_options());
  std::vector<uint64_t> ids(200);
  for (int i = 0; i < 200; ++i) ids[i] = 100 + i;
  std::vector<float> rows(200 * kDim);
  many.find_or_insert(ids.data(), 200, rows.data());
  const std::string many_path = dir.file("many.gre");
  dump_table(many, many_path);
  e = error_of([&] { cuda::load_table(one_bucket, many_path, stream); });
  EXPECT_NE(e.find("72 of 200 rows did not fit"), std::string::npos) << e;
}

}  // namespace
}  // namespace genrec
