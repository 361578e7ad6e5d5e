// Lookups through the tiered table with its RocksDB disk tier: 2^19 ids of dim 32 (rows with
// Adam state) over a hot tier of 2^14 rows and a host tier of 2^16, so most rows live on disk.
// After every id has been inserted once, batches of 8192 ids are drawn with a skew (id = N u^k,
// u uniform: a larger k means hotter head ids) and timed; prints keys/s, the hit rate of each
// tier and the rows moved per batch. Built as genrec_tiered_bench when RocksDB is found; the
// database goes to the directory given as the argument (default: the temp directory).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "core/philox.h"
#include "embedding/disk_tier.h"
#include "embedding/tiered_table.h"

using namespace genrec;

int main(int argc, char** argv) {
  constexpr int64_t kIds = 1 << 19, kBatch = 8192, kBatches = 200, kDim = 32;
  const std::string dir =
      argc > 1 ? argv[1]
               : (std::filesystem::temp_directory_path() / "genrec_tiered_bench").string();
  std::printf("%-5s %10s %8s %8s %8s %8s %10s %10s   (%lld ids, batches of %lld)\n", "skew",
              "M keys/s", "hot", "host", "disk", "new", "fetched/b", "spilled/b",
              static_cast<long long>(kIds), static_cast<long long>(kBatch));
  for (double skew : {1.0, 2.0, 4.0}) {
    TableOptions hot;
    hot.dim = kDim;
    hot.optimizer = OptimizerState::kAdam;
    hot.max_capacity = 1 << 14;
    hot.initial_capacity = 1 << 15;
    hot.initializer = {InitKind::kUniform, 0.05f, 1};
    TableOptions host = hot;
    host.max_capacity = 1 << 16;
    host.initial_capacity = 1 << 17;
    TieredTable table(
        hot, host, std::make_unique<DiskTier>(dir, kDim, optimizer_state_dim(hot.optimizer, kDim)));
    std::vector<uint64_t> keys(kBatch);
    std::vector<float> out(kBatch * kDim);
    uint64_t step = 0;
    for (int64_t b = 0; b < kIds; b += kBatch) {
      for (int64_t i = 0; i < kBatch; ++i) keys[i] = static_cast<uint64_t>(b + i);
      table.set_step(++step);
      table.find_or_insert(keys.data(), kBatch, out.data());
    }
    table.reset_stats();
    Philox rng(7);
    double seconds = 0;
    for (int64_t b = 0; b < kBatches; ++b) {
      for (auto& k : keys) k = static_cast<uint64_t>(kIds * std::pow(rng.uniform(), skew));
      table.set_step(++step);
      const auto t0 = std::chrono::steady_clock::now();
      table.find_or_insert(keys.data(), kBatch, out.data());
      seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    const TierStats s = table.stats();
    const double total = static_cast<double>(kBatch * kBatches);
    std::printf("%-5.0f %10.2f %7.1f%% %7.1f%% %7.1f%% %7.1f%% %10.0f %10.0f\n", skew,
                total / seconds / 1e6, 100 * s.hot_hits / total, 100 * s.host_hits / total,
                100 * s.cold_hits / total, 100 * s.misses / total,
                static_cast<double>(s.fetched) / kBatches,
                static_cast<double>(s.spilled) / kBatches);
  }
  return 0;
}
