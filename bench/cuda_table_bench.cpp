// Throughput of the CUDA dynamic table in billions (10^9) of key-value operations per second
// (B-KV/s) next to NVIDIA HierarchicalKV's published H100 figures for the same operation, dim,
// capacity and load factor (uint64 keys, fp32 values, LRU, 1,048,576 keys per call). The peer's
// benchmark counts a billion as 2^30 keys, so its figures are converted (x 1.074) before the
// ratios are taken. Each table is filled to the load factor with insert_or_assign first, then
// timed on two key sets:
// - the peer's mix, the keys its own benchmark times: 60% the last inserted batch's keys
//   (hits), 40% keys never inserted (misses for find and assign, new rows for the others; they
//   are erased again after each call, untimed, so every call sees the filled table);
// - uniform hits: every key drawn from all the inserted ones, and for insert_and_evict 1M keys
//   never seen before (evicting where a bucket is full, with the evicted rows written out).
// export_batch scans 1,048,576 slots and writes out their rows (one figure for both sets).
// Each figure is the median over timed calls (CUDA events around the call only). A row that
// does not fit in memory is skipped with a message (the run still succeeds).
// A second table measures the host link (host_link_probe.cu: the roofline of the HBM + host
// row), a third the tiered table (CudaTieredTable, see run_tiered) against HierarchicalKV's
// HBM + host figures. Built as genrec_table_bench.
//   genrec_table_bench [--quick] [--reps N] [--link-only | --row R]
//   (--quick: capacities / 16, for a smoke run; --link-only: the host link table alone;
//   --row R: row R of the first table alone, e.g. to profile it)
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "core/cuda/cuda_check.h"
#include "core/cuda/device.h"
#include "core/cuda/stream.h"
#include "core/error.h"
#include "core/philox.h"
#include "core/tensor.h"
#include "embedding/cuda/cuda_dynamic_table.h"
#include "embedding/cuda/cuda_tiered_table.h"
#include "host_link_probe.h"
#include "zipf_sampler.h"

using namespace genrec;
using genrec::bench::ZipfSampler;

namespace {

constexpr int64_t kKeys = 1 << 20;  // keys per call
constexpr int64_t kMaxDim = 128;
constexpr int64_t kM = 1 << 20;
constexpr int64_t kGiB = int64_t{1} << 30;
constexpr int kOps = 6;
const char* const kOpNames[kOps] = {"insert_or_assign", "find",        "find_or_insert", "assign",
                                    "insert_and_evict", "export_batch"};

struct BenchRow {
  const char* mode;
  int64_t dim, capacity;
  double load;
  int64_t hbm_row_bytes;  // < 0: all rows in HBM
  double peer[kOps];      // HierarchicalKV, B-KV/s; < 0: none
};

// Distinct keys for distinct i (odd multiplier: a bijection), never kEmptyKey in range.
uint64_t key_of(uint64_t i) {
  return (i + 1) * 0x9E3779B97F4A7C15ull;
}

template <typename T>
T* device_alloc(int64_t count) {
  void* p = nullptr;
  GENREC_CUDA_CHECK(cudaMalloc(&p, sizeof(T) * count));
  return static_cast<T*>(p);
}

void upload_keys(uint64_t* dst, const std::vector<uint64_t>& keys, cudaStream_t stream) {
  GENREC_CUDA_CHECK(cudaMemcpyAsync(dst, keys.data(), sizeof(uint64_t) * keys.size(),
                                    cudaMemcpyHostToDevice, stream));
}

// HierarchicalKV's benchmark divides keys per second by 2^30 and calls it billions.
constexpr double kPeerBillion = static_cast<double>(1 << 30) / 1e9;
// The peer's timed keys per call that are the last inserted batch's, 60% (the rest are new).
constexpr int64_t kPeerHitKeys = kKeys * 6 / 10;

// The index of the peer's mix's hit key i after keys 0 .. inserted - 1 went in, in batches of
// kKeys: key i of the last batch.
uint64_t peer_hit_index(int64_t inserted, int64_t i) {
  return static_cast<uint64_t>(std::max<int64_t>(0, inserted - kKeys) + i % inserted);
}

// ours in B-KV/s; peer as published (2^30 keys per second), < 0 for none.
std::string cell(double ours, double peer) {
  char buf[64];
  if (peer > 0) {
    std::snprintf(buf, sizeof(buf), "%.3f (%.2fx)", ours, ours / (peer * kPeerBillion));
  } else {
    std::snprintf(buf, sizeof(buf), "%.3f", ours);
  }
  return buf;
}

// The tiered table at dim 64 with HierarchicalKV's HBM + host shape: hot = 16 GiB of rows in
// HBM (64M slots), host = a DynamicTable with 64M slots reserved, 96M keys in all (load 0.75 of
// the 128M slots), all inserted through the table (find_or_insert of new keys in batches of 1M:
// hot keeps the newest rows and demotes the oldest to host). Then, per key set, 10 untimed
// warm-up calls (they promote the head), find_or_insert, then find, one step per call (LRU):
// the peer's mix (60% the last inserted batch's keys, 40% keys never seen, new rows for
// find_or_insert, which keeps them, misses for find), uniform keys over the inserted set, and
// Zipf ranks. Wall-clock median (the calls synchronize: the host table is on the host); the hit
// rate is the share of the timed find_or_insert occurrences found in hot.
void run_tiered(bool quick, int reps, uint64_t* d_keys, float* d_values, uint8_t* d_flags,
                cuda::Stream& stream) {
  constexpr int64_t kDim = 64, kWarmup = 10;
  constexpr double kZipf = 1.05;
  const int64_t scale = quick ? 16 : 1;
  const int64_t hot_slots = 16 * kGiB / (kDim * 4) / scale;
  const int64_t host_slots = 64 * kM / scale;
  const int64_t total = (hot_slots + host_slots) * 3 / 4;
  std::printf(
      "\nTiered table (CudaTieredTable): hot = all rows in HBM, host = DynamicTable on %u "
      "threads; %lld keys per call, median of %d calls after %lld warm-up calls, "
      "B-KV/s (ratio to HierarchicalKV HBM + host)%s\n\n",
      std::thread::hardware_concurrency(), static_cast<long long>(kKeys), reps,
      static_cast<long long>(kWarmup), quick ? ", --quick: capacities / 16" : "");
  std::printf(
      "| keys | dim | hot + host slots | load | find_or_insert | find | hot hit rate | "
      "promoted / call | demoted / call | fill s |\n|---|---|---|---|---|---|---|---|---|"
      "---|\n");
  std::fflush(stdout);
  try {
    cuda::CudaTableOptions hot;
    hot.dim = kDim;
    hot.capacity = hot_slots;
    TableOptions host;
    host.dim = kDim;
    host.initial_capacity = host_slots;
    host.num_shards = 64;
    cuda::CudaTieredTable table(hot, host);
    const auto fill_start = std::chrono::steady_clock::now();
    std::vector<uint64_t> keys(kKeys);
    uint64_t step = 0;
    for (int64_t b = 0; b < total; b += kKeys) {
      const int64_t n = std::min(kKeys, total - b);
      for (int64_t i = 0; i < n; ++i) keys[i] = key_of(b + i);
      upload_keys(d_keys, keys, stream);
      table.set_step(++step);
      table.find_or_insert(d_keys, n, d_values, d_flags, stream);
    }
    const double fill_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - fill_start).count();
    const ZipfSampler zipf(static_cast<uint64_t>(total), kZipf);
    // Zipf rank r is key index (r - 1) * a large odd number (coprime with total) mod total, so
    // the head is spread over both tiers at the start.
    const auto zipf_index = [&](uint64_t rank) {
      return static_cast<uint64_t>((static_cast<unsigned __int128>(rank - 1) * 2654435761u) %
                                   static_cast<uint64_t>(total));
    };
    Philox rng(2024);
    uint64_t fresh = static_cast<uint64_t>(total);  // next never-inserted key index
    enum KeySet { kPeerMix, kUniform, kZipfRanks };
    for (const KeySet set : {kPeerMix, kUniform, kZipfRanks}) {
      auto next_batch = [&] {
        for (int64_t i = 0; i < kKeys; ++i) {
          uint64_t index = 0;
          if (set == kPeerMix) {
            index = i < kPeerHitKeys ? peer_hit_index(total, i) : fresh++;
          } else if (set == kUniform) {
            index = rng.below(static_cast<uint64_t>(total));
          } else {
            index = zipf_index(zipf(rng));
          }
          keys[i] = key_of(index);
        }
        upload_keys(d_keys, keys, stream);
        table.set_step(++step);
      };
      auto median_bkvs = [&](auto&& op) {
        std::vector<double> s;
        for (int r = 0; r < reps; ++r) {
          next_batch();
          GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
          const auto t0 = std::chrono::steady_clock::now();
          op();
          s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        std::sort(s.begin(), s.end());
        return static_cast<double>(kKeys) / s[s.size() / 2] / 1e9;
      };
      for (int64_t w = 0; w < kWarmup; ++w) {
        next_batch();
        table.find_or_insert(d_keys, kKeys, d_values, d_flags, stream);
      }
      table.reset_stats();
      const double foi =
          median_bkvs([&] { table.find_or_insert(d_keys, kKeys, d_values, d_flags, stream); });
      const TierStats st = table.stats();
      const double fnd = median_bkvs([&] { table.find(d_keys, kKeys, d_values, d_flags, stream); });
      const double looked = static_cast<double>(st.hot_hits + st.host_hits + st.misses);
      std::printf("| %s | %lld | %lldM + %lldM | %.2f | %s | %s | %.4f | %.0f | %.0f | %.1f |\n",
                  set == kPeerMix   ? "peer's mix"
                  : set == kUniform ? "uniform"
                                    : "Zipf 1.05",
                  static_cast<long long>(kDim), static_cast<long long>(hot_slots / kM),
                  static_cast<long long>(host_slots / kM),
                  static_cast<double>(total) / static_cast<double>(hot_slots + host_slots),
                  cell(foi, 0.148).c_str(), cell(fnd, 0.188).c_str(),
                  static_cast<double>(st.hot_hits) / looked,
                  static_cast<double>(st.promoted) / reps, static_cast<double>(st.demoted) / reps,
                  fill_s);
      std::fflush(stdout);
    }
  } catch (const Error& e) {
    cudaGetLastError();
    std::printf("| skipped: %s |\n", e.what());
  }
  std::printf("\nfill s: seconds to insert the keys through the table (find_or_insert).\n");
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, link_only = false;
  int reps = 5, only_row = -1;
  for (int a = 1; a < argc; ++a) {
    if (std::strcmp(argv[a], "--quick") == 0) {
      quick = true;
    } else if (std::strcmp(argv[a], "--link-only") == 0) {
      link_only = true;
    } else if (std::strcmp(argv[a], "--row") == 0 && a + 1 < argc) {
      only_row = std::atoi(argv[++a]);
    } else if (std::strcmp(argv[a], "--reps") == 0 && a + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++a]));
    } else {
      std::fprintf(stderr,
                   "usage: genrec_table_bench [--quick] [--reps N] [--link-only | --row R]\n");
      return 2;
    }
  }
  if (!cuda_available()) {  // as the other CUDA benchmarks: nothing to measure is no failure
    std::printf("genrec_table_bench: no CUDA device\n");
    return 0;
  }
  const std::vector<BenchRow> rows = {
      {"HBM", 8, 128 * kM, 0.50, -1, {1.863, 3.676, 1.894, 2.891, 1.742, 5.463}},
      {"HBM", 8, 128 * kM, 0.75, -1, {1.729, 3.316, 1.804, 2.778, 1.585, 5.634}},
      {"HBM", 32, 128 * kM, 0.75, -1, {1.616, 3.418, 1.628, 2.509, 1.326, 0.723}},
      {"HBM", 64, 64 * kM, 0.50, -1, {1.493, 2.745, 1.522, 2.333, 1.261, 0.505}},
      {"HBM", 64, 64 * kM, 0.75, -1, {1.448, 2.895, 1.446, 2.362, 1.206, 0.298}},
      {"HBM 16 GB + host 16 GB",
       64,
       128 * kM,
       0.75,
       16 * kGiB,
       {0.151, 0.188, 0.148, 0.184, -1, 0.293}},
      {"HBM", 128, 64 * kM, 0.75, -1, {-1, -1, -1, -1, -1, -1}},
  };
  const auto t_start = std::chrono::steady_clock::now();
  std::printf("device: %s\n", cuda::device_summary(cuda::current_device()).c_str());
  if (link_only) {
    cuda::Stream stream;
    bench::print_host_link_probe(quick ? kGiB : 16 * kGiB, stream);
    return 0;
  }
  std::printf("%lld keys per call, median of %d calls, B-KV/s (ratio to HierarchicalKV)%s\n\n",
              static_cast<long long>(kKeys), reps, quick ? ", --quick: capacities / 16" : "");
  std::printf("| mode | dim | capacity | load | keys |");
  for (const char* name : kOpNames) std::printf(" %s |", name);
  std::printf(" filled |\n|---|---|---|---|---|");
  for (int o = 0; o < kOps; ++o) std::printf("---|");
  std::printf("---|\n");
  std::fflush(stdout);

  cuda::Stream stream;
  uint64_t* d_keys = device_alloc<uint64_t>(kKeys);
  float* d_values = device_alloc<float>(kKeys * kMaxDim);
  uint8_t* d_flags = device_alloc<uint8_t>(kKeys);
  uint64_t* d_ev_keys = device_alloc<uint64_t>(kKeys);
  float* d_ev_rows = device_alloc<float>(kKeys * kMaxDim);
  uint64_t* d_ev_scores = device_alloc<uint64_t>(kKeys);
  int64_t* d_count = device_alloc<int64_t>(1);
  GENREC_CUDA_CHECK(cudaMemset(d_values, 0, sizeof(float) * kKeys * kMaxDim));
  cuda::Event start(true), stop(true);
  int skipped = 0;

  for (size_t r = 0; r < rows.size(); ++r) {
    if (only_row >= 0 && static_cast<size_t>(only_row) != r) continue;
    const BenchRow& row = rows[r];
    const int64_t capacity = quick ? row.capacity / 16 : row.capacity;
    const int64_t hbm_bytes =
        row.hbm_row_bytes < 0 || !quick ? row.hbm_row_bytes : row.hbm_row_bytes / 16;
    auto print_row = [&](const char* key_set) {
      std::printf("| %s | %lld | %lldM | %.2f | %s |", row.mode, static_cast<long long>(row.dim),
                  static_cast<long long>(capacity / kM), row.load, key_set);
    };
    try {
      cuda::CudaTableOptions opt;
      opt.dim = row.dim;
      opt.capacity = capacity;
      opt.max_hbm_row_bytes = hbm_bytes;
      // The raw table against HierarchicalKV, which logs no removals (and insert_and_evict would
      // grow the log by every timed call).
      opt.log_removals = false;
      cuda::CudaDynamicTable table(opt);
      const int64_t present = static_cast<int64_t>(row.load * static_cast<double>(capacity));
      std::vector<uint64_t> keys(kKeys);
      for (int64_t b = 0; b < present; b += kKeys) {
        const int64_t n = std::min(kKeys, present - b);
        for (int64_t i = 0; i < n; ++i) keys[i] = key_of(b + i);
        upload_keys(d_keys, keys, stream);
        table.insert_or_assign(d_keys, d_values, n, stream);
      }
      const double filled = static_cast<double>(table.size(stream)) / capacity;
      Philox rng(static_cast<uint64_t>(row.dim * 1000 + row.load * 100));
      uint64_t fresh = present;  // next never-inserted key index
      // keys_for_call() runs before the timed interval, after() behind it.
      auto time_op = [&](auto&& keys_for_call, auto&& op, auto&& after) {
        std::vector<float> ms;
        for (int r = 0; r <= reps; ++r) {  // call 0 warms up
          keys_for_call();
          start.record(stream);
          op();
          stop.record(stream);
          stop.synchronize();
          after();
          if (r > 0) ms.push_back(stop.elapsed_ms_since(start));
        }
        std::sort(ms.begin(), ms.end());
        return static_cast<double>(kKeys) / (ms[ms.size() / 2] * 1e-3) / 1e9;
      };
      const cuda::EvictedRows evicted{d_ev_keys, d_ev_rows, d_ev_scores, d_count};
      // The five keyed operations: keys_for_call() fills d_keys for each call (evict_keys() for
      // insert_and_evict's), after() follows it.
      auto time_keyed = [&](double(&out)[kOps], auto&& keys_for_call, auto&& evict_keys,
                            auto&& after) {
        out[0] = time_op(
            keys_for_call,
            [&] { table.insert_or_assign(d_keys, d_values, kKeys, stream, d_flags); }, after);
        out[1] = time_op(
            keys_for_call, [&] { table.find(d_keys, kKeys, d_values, d_flags, stream); }, after);
        out[2] = time_op(
            keys_for_call, [&] { table.find_or_insert(d_keys, kKeys, d_values, d_flags, stream); },
            after);
        out[3] = time_op(
            keys_for_call, [&] { table.assign(d_keys, d_values, kKeys, stream, d_flags); }, after);
        out[4] = time_op(
            evict_keys,
            [&] {
              table.insert_or_assign(d_keys, d_values, kKeys, stream, d_flags, nullptr, &evicted);
            },
            after);
      };
      auto reset_evicted = [&] {
        GENREC_CUDA_CHECK(cudaMemsetAsync(d_count, 0, sizeof(int64_t), stream));
      };
      // The peer's mix: the first 60% of the last inserted batch's keys (the loads are whole
      // batches), then fresh keys, new for every call and erased after it.
      for (int64_t i = 0; i < kPeerHitKeys; ++i) keys[i] = key_of(peer_hit_index(present, i));
      auto mixed_keys = [&] {
        for (int64_t i = kPeerHitKeys; i < kKeys; ++i) keys[i] = key_of(fresh++);
        upload_keys(d_keys, keys, stream);
        reset_evicted();
      };
      double peer_mix[kOps], uniform[kOps];
      time_keyed(peer_mix, mixed_keys, mixed_keys,
                 [&] { table.erase(d_keys + kPeerHitKeys, kKeys - kPeerHitKeys, stream); });
      // Uniform hits; insert_and_evict (last: the load grows by 1M keys per call) new keys only.
      for (auto& k : keys) k = key_of(rng.below(present));
      upload_keys(d_keys, keys, stream);
      time_keyed(
          uniform, [] {},
          [&] {
            for (auto& k : keys) k = key_of(fresh++);
            upload_keys(d_keys, keys, stream);
            reset_evicted();
          },
          [] {});
      int64_t offset = 0;
      peer_mix[5] = uniform[5] = time_op(
          [&] {
            offset =
                static_cast<int64_t>(rng.below(std::max<int64_t>(1, capacity / kKeys))) * kKeys;
            reset_evicted();
          },
          [&] { table.export_batch(offset, kKeys, d_ev_keys, d_values, d_count, stream); }, [] {});
      for (const auto& [name, out] :
           {std::pair{"peer's mix", &peer_mix}, {"uniform hits", &uniform}}) {
        print_row(name);
        for (int o = 0; o < kOps; ++o) std::printf(" %s |", cell((*out)[o], row.peer[o]).c_str());
        std::printf(" %.3f |\n", filled);
      }
    } catch (const Error& e) {
      cudaGetLastError();  // an allocation failure must not surface at the next launch
      print_row("-");
      std::printf(" skipped: %s |\n", e.what());
      ++skipped;
    }
    std::fflush(stdout);
  }
  std::printf(
      "\nkeys: the peer's mix is what HierarchicalKV's benchmark times (60%% the last inserted "
      "batch, 40%% new keys, erased after each call); uniform hits are drawn from every "
      "inserted key. insert_and_evict: insert_or_assign with the evicted rows written out "
      "(uniform hits: new keys only, the load grows by 1M keys per call); export_batch: slots "
      "scanned per second (one measurement, in both rows). Ratios: to the peer's figure in "
      "10^9 keys/s (its benchmark's billion is 2^30).\n");
  if (only_row < 0) {
    bench::print_host_link_probe(quick ? kGiB : 16 * kGiB, stream);
    run_tiered(quick, reps, d_keys, d_values, d_flags, stream);
  }
  std::printf("total %.1f s, %d rows skipped\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count(),
              skipped);
  cudaFree(d_keys);
  cudaFree(d_values);
  cudaFree(d_flags);
  cudaFree(d_ev_keys);
  cudaFree(d_ev_rows);
  cudaFree(d_ev_scores);
  cudaFree(d_count);
  return 0;
}
