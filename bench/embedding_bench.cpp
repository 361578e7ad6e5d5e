// Throughput of the CPU DynamicTable: millions of keys per second for find, find_or_insert,
// insert_or_assign and assign, at dims 8/32/64/128 and load factors 0.5/0.75, with 1M keys
// per call. The table has 2^20 slots (scaled down from GPU-sized tables so that the whole
// run takes well under a minute on 2 cores) and is filled to the load factor first; each
// call's keys are drawn from the present keys, so every op hits. Built as genrec_embedding_bench.
#include <chrono>
#include <cstdio>
#include <vector>

#include "core/philox.h"
#include "embedding/dynamic_table.h"

using namespace genrec;

int main() {
  constexpr int64_t kSlots = 1 << 20, kBatch = 1 << 20, kReps = 3;
  std::printf("%-5s %-5s %12s %16s %18s %12s   (M keys/s, %lld keys per call)\n", "dim", "load",
              "find", "find_or_insert", "insert_or_assign", "assign",
              static_cast<long long>(kBatch));
  for (int64_t dim : {8, 32, 64, 128}) {
    for (double load : {0.5, 0.75}) {
      TableOptions opt;
      opt.dim = dim;
      opt.initial_capacity = kSlots;
      opt.max_load_factor = 0.95;  // no growth during the run
      opt.num_shards = 64;
      DynamicTable table(opt);
      const int64_t present = static_cast<int64_t>(load * kSlots);
      Philox rng(dim);
      std::vector<uint64_t> keys(present);
      for (auto& k : keys) k = rng.next_u64() >> 1;
      std::vector<float> values(kBatch * dim, 0.5f);
      for (int64_t b = 0; b < present; b += kBatch) {
        table.insert_or_assign(keys.data() + b, values.data(), std::min(kBatch, present - b));
      }
      std::vector<uint64_t> batch(kBatch);
      for (auto& k : batch) k = keys[rng.below(present)];
      std::vector<uint8_t> mask(kBatch);
      auto time = [&](auto&& op) {
        double best = 1e30;
        for (int r = 0; r < kReps; ++r) {
          auto t0 = std::chrono::steady_clock::now();
          op();
          best = std::min(
              best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        return kBatch / best / 1e6;
      };
      const double find =
          time([&] { table.find(batch.data(), kBatch, values.data(), mask.data()); });
      const double foi =
          time([&] { table.find_or_insert(batch.data(), kBatch, values.data(), mask.data()); });
      const double ioa = time([&] { table.insert_or_assign(batch.data(), values.data(), kBatch); });
      const double asg = time([&] { table.assign(batch.data(), values.data(), kBatch); });
      std::printf("%-5lld %-5.2f %12.1f %16.1f %18.1f %12.1f   (size %lld, capacity %lld)\n",
                  static_cast<long long>(dim), load, find, foi, ioa, asg,
                  static_cast<long long>(table.size()), static_cast<long long>(table.capacity()));
    }
  }
  return 0;
}
