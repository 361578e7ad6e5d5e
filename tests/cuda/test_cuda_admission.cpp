// GPU admission against the CPU's: CudaCountingFilter vs CountingFilter (counters, estimates,
// decay, clear, load), and CudaDynamicTable with a filter vs DynamicTable with one (rows,
// values, flags and counters after random batches with duplicates). Keys are chosen to share no
// sketch counter, so the order in which a batch's keys update the sketch cannot matter and the
// two sides must agree exactly. Outputs are poisoned (all bytes 0xFF) before each call.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <map>
#include <memory>
#include <unordered_set>
#include <vector>

#include "core/cuda/stream.h"
#include "core/error.h"
#include "core/philox.h"
#include "cuda_test_util.h"
#include "embedding/admission.h"
#include "embedding/count_min_index.h"
#include "embedding/cuda/cuda_counting_filter.h"
#include "embedding/cuda/cuda_dynamic_table.h"
#include "embedding/dynamic_table.h"

namespace genrec {
namespace {

using cuda::CudaCountingFilter;
using cuda::CudaDynamicTable;
using cuda::CudaTableOptions;
using test::poisoned;
using test::upload_raw;

AdmissionOptions sketch(int threshold) {
  AdmissionOptions a;
  a.threshold = threshold;
  a.num_hashes = 4;
  a.width = 1 << 14;
  a.seed = 17;
  return a;
}

// `count` keys whose counters are all distinct (no two keys share one in any row).
std::vector<uint64_t> keys_sharing_no_counter(const AdmissionOptions& a, int count, uint64_t seed) {
  const uint64_t mask = std::bit_ceil(static_cast<uint64_t>(a.width)) - 1;
  std::unordered_set<uint64_t> used;
  std::vector<uint64_t> keys;
  Philox rng(seed);
  while (static_cast<int>(keys.size()) < count) {
    const uint64_t key = rng.next_u64() >> 1;
    std::vector<uint64_t> c(a.num_hashes);
    bool free = true;
    for (int r = 0; r < a.num_hashes; ++r) {
      c[r] = count_min_index(key, r, mask, a.seed);
      free = free && used.count(c[r]) == 0;
    }
    if (!free) continue;
    used.insert(c.begin(), c.end());
    keys.push_back(key);
  }
  return keys;
}

// A batch of n keys from `pool`, one in three a repeat of an earlier key of the batch.
std::vector<uint64_t> batch_with_duplicates(const std::vector<uint64_t>& pool, int64_t n,
                                            Philox& rng) {
  std::vector<uint64_t> keys(n);
  for (int64_t i = 0; i < n; ++i) {
    keys[i] = i > 0 && rng.below(3) == 0 ? keys[rng.below(i)] : pool[rng.below(pool.size())];
  }
  return keys;
}

std::vector<uint32_t> gpu_estimates(const CudaCountingFilter& f, const std::vector<uint64_t>& keys,
                                    cudaStream_t stream) {
  auto d_keys = upload_raw(keys);
  auto d_out = poisoned<uint32_t>(static_cast<int64_t>(keys.size()));
  f.estimate(d_keys.get(), static_cast<int64_t>(keys.size()), d_out.get(), stream);
  auto out = d_out.download_raw();
  out.resize(keys.size());
  return out;
}

void expect_same_filters(const CudaCountingFilter& gpu, const CountingFilter& cpu,
                         const std::vector<uint64_t>& keys, cudaStream_t stream) {
  EXPECT_EQ(gpu.counters(stream), cpu.counters());
  const auto est = gpu_estimates(gpu, keys, stream);
  for (size_t i = 0; i < keys.size(); ++i) {
    ASSERT_EQ(est[i], cpu.estimate(keys[i])) << "key " << keys[i];
  }
}

TEST(CudaAdmission, BadOptionsAreRefused) {
  AdmissionOptions a = sketch(0);
  EXPECT_THROW(CudaCountingFilter{a}, Error);
  a = sketch(3);
  a.num_hashes = 17;
  EXPECT_THROW(CudaCountingFilter{a}, Error);
  a = sketch(3);
  a.width = 0;
  EXPECT_THROW(CudaCountingFilter{a}, Error);
}

TEST(CudaAdmission, FilterMatchesCpuFilter) {
  GENREC_REQUIRE_CUDA();
  const AdmissionOptions a = sketch(5);
  CudaCountingFilter gpu(a);
  CountingFilter cpu(a);
  ASSERT_EQ(gpu.num_counters(), cpu.num_counters());
  cuda::Stream stream;
  const auto pool = keys_sharing_no_counter(a, 300, 1);
  Philox rng(2);
  auto record_both = [&](const std::vector<uint64_t>& keys) {
    auto d_keys = upload_raw(keys);
    gpu.record(d_keys.get(), static_cast<int64_t>(keys.size()), stream);
    for (uint64_t k : keys) cpu.record(k);
  };
  for (int round = 0; round < 8; ++round) {
    SCOPED_TRACE(testing::Message() << "round " << round);
    auto keys = batch_with_duplicates(pool, 1 + static_cast<int64_t>(rng.below(600)), rng);
    // One hot key past saturation (255) in one batch.
    if (round == 3) keys.insert(keys.end(), 300, pool[0]);
    record_both(keys);
    expect_same_filters(gpu, cpu, pool, stream);
    if (round == 3) {
      ASSERT_EQ(cpu.estimate(pool[0]), 255u);
    }
    if (round % 3 == 2) {
      gpu.decay(stream);
      cpu.decay();
      expect_same_filters(gpu, cpu, pool, stream);
    }
  }
  // Counters move both ways between the two.
  CudaCountingFilter loaded(a);
  loaded.load_counters(cpu.counters(), stream);
  expect_same_filters(loaded, cpu, pool, stream);
  CountingFilter back(a);
  back.load_counters(gpu.counters(stream));
  EXPECT_EQ(back.counters(), cpu.counters());
  EXPECT_THROW(loaded.load_counters(std::vector<uint8_t>(7), stream), Error);
  gpu.clear(stream);
  cpu.clear();
  expect_same_filters(gpu, cpu, pool, stream);
  EXPECT_EQ(gpu.counters(stream), std::vector<uint8_t>(gpu.num_counters(), 0));
}

// Many keys on few counters: the order of colliding keys is free, but count-min never
// under-counts, so every estimate is at least the key's true count.
TEST(CudaAdmission, FilterNeverUndercountsUnderCollisions) {
  GENREC_REQUIRE_CUDA();
  AdmissionOptions a = sketch(200);
  a.num_hashes = 3;
  a.width = 64;
  CudaCountingFilter gpu(a);
  cuda::Stream stream;
  std::vector<uint64_t> keys, distinct;
  for (uint64_t k = 0; k < 500; ++k) {
    distinct.push_back(k);
    for (uint64_t s = 0; s < k % 7; ++s) keys.push_back(k);
  }
  auto d_keys = upload_raw(keys);
  gpu.record(d_keys.get(), static_cast<int64_t>(keys.size()), stream);
  const auto est = gpu_estimates(gpu, distinct, stream);
  for (uint64_t k = 0; k < 500; ++k) EXPECT_GE(est[k], k % 7) << "key " << k;
}

// record_until_admitted counts each key's candidate occurrences as the CPU table does: one
// sighting per occurrence until the one that admits it.
TEST(CudaAdmission, RecordUntilAdmittedMatchesCpuTableCounting) {
  GENREC_REQUIRE_CUDA();
  const AdmissionOptions a = sketch(3);
  CudaCountingFilter gpu(a);
  CountingFilter cpu(a);
  cuda::Stream stream;
  const auto pool = keys_sharing_no_counter(a, 200, 3);
  Philox rng(4);
  for (int round = 0; round < 8; ++round) {
    SCOPED_TRACE(testing::Message() << "round " << round);
    const auto keys = batch_with_duplicates(pool, 1 + static_cast<int64_t>(rng.below(500)), rng);
    const int64_t n = static_cast<int64_t>(keys.size());
    std::vector<uint8_t> candidates(n);
    for (auto& c : candidates) c = rng.below(4) != 0;
    std::unordered_set<uint64_t> admitted;
    for (int64_t i = 0; i < n; ++i) {
      if (candidates[i] && admitted.count(keys[i]) == 0 && cpu.record(keys[i])) {
        admitted.insert(keys[i]);
      }
    }
    auto d_keys = upload_raw(keys);
    auto d_candidates = upload_raw(candidates);
    gpu.record_until_admitted(d_keys.get(), n, d_candidates.get(), stream);
    expect_same_filters(gpu, cpu, pool, stream);
  }
}

TEST(CudaAdmission, ThresholdOneRecordsNothing) {
  GENREC_REQUIRE_CUDA();
  CudaCountingFilter gpu(sketch(1));
  cuda::Stream stream;
  const std::vector<uint64_t> keys = {1, 2, 2, 3};
  auto d_keys = upload_raw(keys);
  gpu.record(d_keys.get(), 4, stream);
  EXPECT_EQ(gpu.counters(stream), std::vector<uint8_t>(gpu.num_counters(), 0));
}

constexpr int64_t kDim = 8;

CudaTableOptions gpu_options(std::shared_ptr<CudaCountingFilter> filter) {
  CudaTableOptions opt;
  opt.dim = kDim;
  opt.optimizer = OptimizerState::kAdagrad;
  opt.initial_state = 0.5f;
  opt.initializer = {InitKind::kUniform, 0.5f, 23};  // bit-identical rows on both sides
  opt.capacity = 16384;                              // no bucket fills
  opt.admission = std::move(filter);
  return opt;
}

TableOptions cpu_options(std::shared_ptr<CountingFilter> filter) {
  TableOptions opt;
  opt.dim = kDim;
  opt.optimizer = OptimizerState::kAdagrad;
  opt.initial_state = 0.5f;
  opt.initializer = {InitKind::kUniform, 0.5f, 23};
  opt.admission = std::move(filter);
  return opt;
}

void expect_same_rows(const TableRows& g, const TableRows& c) {
  EXPECT_EQ(g.keys, c.keys);
  EXPECT_EQ(g.scores, c.scores);
  EXPECT_EQ(g.values, c.values);
  EXPECT_EQ(g.states, c.states);
}

// Random find_or_insert and insert_or_assign batches with duplicates on both tables.
TEST(CudaAdmission, TableMatchesCpuTableWithAdmission) {
  GENREC_REQUIRE_CUDA();
  const AdmissionOptions a = sketch(3);
  auto gpu_filter = std::make_shared<CudaCountingFilter>(a);
  auto cpu_filter = std::make_shared<CountingFilter>(a);
  CudaDynamicTable gpu(gpu_options(gpu_filter));
  DynamicTable cpu(cpu_options(cpu_filter));
  cuda::Stream stream;
  const auto pool = keys_sharing_no_counter(a, 800, 5);
  Philox rng(6);
  int64_t refused = 0, admitted_late = 0, inserted = 0;
  for (int round = 0; round < 40; ++round) {
    SCOPED_TRACE(testing::Message() << "round " << round);
    gpu.set_step(round + 1);
    cpu.set_step(round + 1);
    const int64_t n = 1 + static_cast<int64_t>(rng.below(400));
    const auto keys = batch_with_duplicates(pool, n, rng);
    auto d_keys = upload_raw(keys);
    auto d_flags = poisoned<uint8_t>(n);
    std::vector<uint8_t> cpu_flags(n);
    if (rng.below(4) != 0) {
      auto d_out = poisoned<float>(n * kDim);
      // Every fifth call without stored flags (optional).
      const bool flags = round % 5 != 4;
      gpu.find_or_insert(d_keys.get(), n, d_out.get(), flags ? d_flags.get() : nullptr, stream);
      std::vector<float> cpu_out(n * kDim);
      cpu.find_or_insert(keys.data(), n, cpu_out.data(), cpu_flags.data());
      auto out = d_out.download_raw();
      out.resize(n * kDim);
      EXPECT_EQ(out, cpu_out) << "initial rows for refused and new keys, rows for present ones";
      if (flags) {
        auto got = d_flags.download_raw();
        // The GPU stores every occurrence of a key the CPU stored at any occurrence.
        std::unordered_set<uint64_t> stored;
        for (int64_t i = 0; i < n; ++i) {
          if (cpu_flags[i]) stored.insert(keys[i]);
        }
        for (int64_t i = 0; i < n; ++i) {
          const bool in = stored.count(keys[i]) != 0;
          ASSERT_EQ(got[i], in ? 1 : 0) << "occurrence " << i;
          refused += !in;
          admitted_late += in && !cpu_flags[i];
        }
      }
    } else {
      std::vector<float> values(n * kDim);
      for (auto& v : values) v = rng.uniform();
      auto d_values = upload_raw(values);
      gpu.insert_or_assign(d_keys.get(), d_values.get(), n, stream, d_flags.get());
      cpu.insert_or_assign(keys.data(), values.data(), n, nullptr, nullptr, cpu_flags.data());
      auto got = d_flags.download_raw();
      got.resize(n);
      EXPECT_EQ(got, cpu_flags) << "insert_or_assign is not subject to admission";
      inserted += n;
    }
    expect_same_rows(gpu.export_rows(0, stream), cpu.export_rows());
    EXPECT_EQ(gpu_filter->counters(stream), cpu_filter->counters());
  }
  // The batches exercised what they are meant to.
  EXPECT_GT(refused, 0);
  EXPECT_GT(admitted_late, 0);
  EXPECT_GT(inserted, 0);
}

// Refused keys take no slot: a full bucket evicts nothing for them.
TEST(CudaAdmission, RefusedKeysEvictNothing) {
  GENREC_REQUIRE_CUDA();
  auto filter = std::make_shared<CudaCountingFilter>(sketch(2));
  CudaTableOptions opt = gpu_options(filter);
  opt.capacity = 128;  // one bucket
  CudaDynamicTable table(opt);
  cuda::Stream stream;
  std::vector<uint64_t> old_keys(128);
  for (int i = 0; i < 128; ++i) old_keys[i] = 10 + i;
  std::vector<float> values(128 * kDim, 1.0f);
  auto d_old = upload_raw(old_keys);
  auto d_values = upload_raw(values);
  table.insert_or_assign(d_old.get(), d_values.get(), 128, stream);
  ASSERT_EQ(table.size(stream), 128);
  // New keys seen once (refused), and one seen twice (admitted, evicting one row).
  std::vector<uint64_t> keys = {5000, 5001, 5002, 5003, 5003};
  const int64_t n = static_cast<int64_t>(keys.size());
  auto d_keys = upload_raw(keys);
  auto d_out = poisoned<float>(n * kDim);
  auto d_stored = poisoned<uint8_t>(n);
  cuda::DeviceBuffer<uint64_t> ev_keys(n, stream);
  auto ev_count = upload_raw(std::vector<int64_t>{0});
  cuda::EvictedRows ev{ev_keys.data(), nullptr, nullptr, ev_count.get()};
  table.find_or_insert(d_keys.get(), n, d_out.get(), d_stored.get(), stream, nullptr, &ev);
  EXPECT_EQ(d_stored.download_raw(), std::vector<uint8_t>({0, 0, 0, 1, 1}));
  EXPECT_EQ(ev_count.download_raw()[0], 1);
  EXPECT_EQ(table.size(stream), 128);
  const auto out = d_out.download_raw();
  for (int64_t i = 0; i < n; ++i) {
    std::vector<float> init(kDim);
    opt.initializer.fill(keys[i], init.data(), kDim);
    EXPECT_EQ(std::vector<float>(out.begin() + i * kDim, out.begin() + (i + 1) * kDim), init)
        << "occurrence " << i;
  }
}

// Threshold 1 admits every key and records nothing: the table behaves as one without a filter.
TEST(CudaAdmission, ThresholdOneIsNoFilter) {
  GENREC_REQUIRE_CUDA();
  auto filter = std::make_shared<CudaCountingFilter>(sketch(1));
  CudaDynamicTable with(gpu_options(filter));
  CudaDynamicTable without(gpu_options(nullptr));
  cuda::Stream stream;
  Philox rng(8);
  std::vector<uint64_t> pool(500);
  for (auto& k : pool) k = rng.next_u64() >> 1;
  for (int round = 0; round < 10; ++round) {
    SCOPED_TRACE(testing::Message() << "round " << round);
    with.set_step(round + 1);
    without.set_step(round + 1);
    const int64_t n = 1 + static_cast<int64_t>(rng.below(400));
    const auto keys = batch_with_duplicates(pool, n, rng);
    auto d_keys = upload_raw(keys);
    auto out_with = poisoned<float>(n * kDim), out_without = poisoned<float>(n * kDim);
    auto stored_with = poisoned<uint8_t>(n), stored_without = poisoned<uint8_t>(n);
    with.find_or_insert(d_keys.get(), n, out_with.get(), stored_with.get(), stream);
    without.find_or_insert(d_keys.get(), n, out_without.get(), stored_without.get(), stream);
    EXPECT_EQ(out_with.download_raw(), out_without.download_raw());
    EXPECT_EQ(stored_with.download_raw(), stored_without.download_raw());
    for (uint8_t s : stored_with.download_raw()) ASSERT_EQ(s, 1);
    expect_same_rows(with.export_rows(0, stream), without.export_rows(0, stream));
  }
  EXPECT_EQ(filter->counters(stream), std::vector<uint8_t>(filter->num_counters(), 0));
}

}  // namespace
}  // namespace genrec
