// find_or_insert in batched steps, each crossing PCIe once per direction:
// 1. hot.contains marks the occurrences in hot; a kernel gathers the others (no kEmptyKey), a
//    radix sort orders them, and they come to the host in one copy, deduplicated there.
// 2. host.find looks them up in one batch; the found rows (promoted) move to the front of the
//    pinned staging and are erased from host; the cold tier gives up the rows of the rest it
//    holds (fetched), which follow them; the rest are new keys.
// 3. the promoted rows (keys, values, states, scores, stamps) go up in one copy each and into hot
//    with insert_rows, the whole batch pinned; then hot.find_or_insert runs the batch, so the hits
//    and promoted rows are found (one access each) and new keys get the initializer. Both hot
//    calls write their evicted rows to one device list, which comes down in one copy and goes
//    into host with one insert_rows (what a bounded host evicts, into cold). The host erase runs
//    while the GPU inserts.
#include "core/cuda/cuda_check.h"  // first: it configures fmt for nvcc

#include "embedding/cuda/cuda_tiered_table.h"

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <cstring>
#include <numeric>

#include "core/error.h"
#include "core/thread_pool.h"

namespace genrec::cuda {
namespace {

constexpr int kBlock = 256;

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + kBlock - 1) / kBlock, 1, 1 << 20));
}

// Gathers the keys with flags[i] == 0 other than kEmptyKey to out (order unspecified), their
// positions to index_out (optional); counts[0] += gathered, counts[1] += kEmptyKey occurrences.
__global__ void __launch_bounds__(kBlock)
    gather_kernel(const uint64_t* keys, const uint8_t* flags, int64_t n, uint64_t* out,
                  int64_t* index_out, unsigned long long* counts) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kBlock;
  // Whole warps iterate together, so the ballots see every lane.
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * kBlock + (threadIdx.x & ~31u); first < n;
       first += stride) {
    const int64_t i = first + lane;
    const bool valid = i < n;
    const uint64_t key = valid ? keys[i] : kEmptyKey;
    const bool miss = valid && key != kEmptyKey && flags[i] == 0;
    const unsigned misses = __ballot_sync(0xFFFFFFFFu, miss);
    const unsigned empties = __ballot_sync(0xFFFFFFFFu, valid && key == kEmptyKey);
    unsigned long long base = 0;
    if (lane == 0 && misses != 0) base = atomicAdd(counts, __popc(misses));
    if (lane == 0 && empties != 0) atomicAdd(counts + 1, __popc(empties));
    base = __shfl_sync(0xFFFFFFFFu, base, 0);
    if (miss) {
      const unsigned long long at = base + __popc(misses & ((1u << lane) - 1));
      out[at] = key;
      if (index_out != nullptr) index_out[at] = i;
    }
  }
}

// values_out row index[j] = rows row j and found_out[index[j]] = 1 where found[j].
__global__ void __launch_bounds__(kBlock)
    scatter_kernel(const float* rows, const uint8_t* found, const int64_t* index, int64_t m,
                   int64_t dim, float* values_out, uint8_t* found_out) {
  const int64_t total = m * dim, stride = static_cast<int64_t>(gridDim.x) * kBlock;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x; e < total;
       e += stride) {
    const int64_t j = e / dim, c = e - j * dim;
    if (!found[j]) continue;
    values_out[index[j] * dim + c] = rows[e];
    if (c == 0) found_out[index[j]] = 1;
  }
}

// Occurrences of the keys in kept (sorted) get kept's rows: host rows that hot could not take.
__global__ void __launch_bounds__(kBlock)
    kept_rows_kernel(const uint64_t* keys, int64_t n, const uint64_t* kept, const float* rows,
                     int64_t num_kept, int64_t dim, float* values_out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kBlock;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x; i < n; i += stride) {
    const uint64_t key = keys[i];
    int64_t lo = 0, hi = num_kept;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (kept[mid] < key) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    if (lo == num_kept || kept[lo] != key) continue;
    for (int64_t c = 0; c < dim; ++c) values_out[i * dim + c] = rows[lo * dim + c];
  }
}

// The buffer with room for at least `count` elements (reallocated, contents lost, when short).
template <typename T>
T* grow(DeviceBuffer<T>& buffer, int64_t count) {
  if (buffer.size() < count) {
    buffer.reset();
    buffer = DeviceBuffer<T>(count);
  }
  return buffer.data();
}

template <typename T>
T* grow(PinnedBuffer& buffer, int64_t count) {
  const size_t bytes = sizeof(T) * static_cast<size_t>(std::max<int64_t>(count, 1));
  if (buffer.size() < bytes) {
    buffer.reset();
    buffer = PinnedPool::global().acquire(bytes);
  }
  return buffer.as<T>();
}

void copy_async(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                cudaStream_t stream) {
  if (bytes > 0) GENREC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, stream));
}

void check_batch(const uint64_t* keys, int64_t n, const float* values_out, const char* op) {
  GENREC_CHECK(n >= 0 && n < int64_t{0xFFFFFFFF},
               "CUDA tiered table {}: batch size {} outside [0, 2^32 - 1)", op, n);
  GENREC_CHECK(n == 0 || (keys != nullptr && values_out != nullptr),
               "CUDA tiered table {}: null keys or values_out", op);
}

// The hot options once the pair is known to be valid (checked before any device allocation).
const CudaTableOptions& checked_hot(const CudaTableOptions& hot, const TableOptions& host,
                                    const ColdTier* cold) {
  GENREC_CHECK(hot.dim == host.dim && hot.optimizer == host.optimizer,
               "CUDA tiered table: tiers differ (dim {} vs {}, optimizer {} vs {})", hot.dim,
               host.dim, optimizer_state_name(hot.optimizer), optimizer_state_name(host.optimizer));
  GENREC_CHECK(hot.eviction == host.eviction && hot.eviction != EvictionPolicy::kCustom,
               "CUDA tiered table: both tiers need one eviction policy other than custom, got {} "
               "and {}",
               eviction_policy_name(hot.eviction), eviction_policy_name(host.eviction));
  GENREC_CHECK(hot.max_hbm_row_bytes < 0,
               "CUDA tiered table: the hot tier keeps every row in HBM (max_hbm_row_bytes {})",
               hot.max_hbm_row_bytes);
  check_lower_tiers(host, cold, "CUDA tiered table");
  return hot;
}

}  // namespace

CudaTieredTable::CudaTieredTable(const CudaTableOptions& hot, const TableOptions& host,
                                 std::unique_ptr<ColdTier> cold)
    : hot_(checked_hot(hot, host, cold.get()).as_tier()),
      host_(host.as_tier()),
      cold_(std::move(cold)) {}

void CudaTieredTable::set_step(uint64_t step) {
  hot_.set_step(step);
  host_.set_step(step);
}

void CudaTieredTable::set_epoch(uint64_t epoch) {
  hot_.set_epoch(epoch);
  host_.set_epoch(epoch);
}

int64_t CudaTieredTable::gather_misses(const uint64_t* keys, const uint8_t* flags, int64_t n,
                                       bool sorted, bool index, int64_t* empties,
                                       cudaStream_t stream) const {
  Scratch& s = scratch_;
  uint64_t* miss = grow(s.miss, n);
  int64_t* counts = grow(s.counts, 3);
  int64_t* h_counts = grow<int64_t>(s.h_counts, 3);
  GENREC_CUDA_CHECK(cudaMemsetAsync(counts, 0, 2 * sizeof(int64_t), stream));
  gather_kernel<<<blocks_for(n), kBlock, 0, stream>>>(
      keys, flags, n, miss, index ? grow(s.miss_index, n) : nullptr,
      reinterpret_cast<unsigned long long*>(counts));
  GENREC_CUDA_LAUNCH_CHECK("tiered table gather");
  copy_async(h_counts, counts, 2 * sizeof(int64_t), cudaMemcpyDeviceToHost, stream);
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
  const int64_t m = h_counts[0];
  if (empties != nullptr) *empties = h_counts[1];
  if (m == 0) return 0;
  const uint64_t* src = miss;
  if (sorted) {
    uint64_t* out = grow(s.sorted, m);
    size_t temp_bytes = 0;
    GENREC_CUDA_CHECK(
        cub::DeviceRadixSort::SortKeys(nullptr, temp_bytes, miss, out, m, 0, 64, stream));
    GENREC_CUDA_CHECK(
        cub::DeviceRadixSort::SortKeys(grow(s.sort_temp, static_cast<int64_t>(temp_bytes)),
                                       temp_bytes, miss, out, m, 0, 64, stream));
    src = out;
  }
  copy_async(grow<uint64_t>(s.h_keys, m), src, sizeof(uint64_t) * m, cudaMemcpyDeviceToHost,
             stream);
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
  return m;
}

void CudaTieredTable::find_or_insert(const uint64_t* keys, int64_t n, float* values_out,
                                     uint8_t* stored, cudaStream_t stream) {
  check_batch(keys, n, values_out, "find_or_insert");
  if (n == 0) return;
  std::lock_guard<std::mutex> lock(mutex_);
  Scratch& s = scratch_;
  const int64_t dim = hot_.dim(), sd = hot_.state_dim(), row_dim = dim + sd;

  // The distinct keys that missed hot, sorted, on the host.
  uint8_t* in_hot = grow(s.flags, n);
  hot_.contains(keys, n, in_hot, stream);
  int64_t empties = 0;
  const int64_t occurrences = gather_misses(keys, in_hot, n, true, false, &empties, stream);
  uint64_t* h_keys = s.h_keys.as<uint64_t>();
  const int64_t m = occurrences == 0 ? 0 : std::unique(h_keys, h_keys + occurrences) - h_keys;

  // Those host holds: their rows to the front of the staging, in key order (from_host of
  // them); then those cold holds (in key order too).
  float* h_values = grow<float>(s.h_values, m * dim);
  float* h_states = grow<float>(s.h_states, m * sd);
  uint64_t* h_scores = grow<uint64_t>(s.h_scores, m);
  uint64_t* h_stamps = grow<uint64_t>(s.h_stamps, m);
  uint8_t* h_found = grow<uint8_t>(s.h_found, m);
  int64_t p = 0;
  std::vector<uint64_t> rest;  // keys host lacks
  if (m > 0 && host_.size() > 0) {
    host_.find(h_keys, m, h_values, h_found, sd > 0 ? h_states : nullptr, h_scores, h_stamps);
    for (int64_t j = 0; j < m; ++j) {
      if (!h_found[j]) {
        if (cold_) rest.push_back(h_keys[j]);  // read before a later row's move overwrites it
        continue;
      }
      if (p != j) {
        h_keys[p] = h_keys[j];
        std::memcpy(h_values + p * dim, h_values + j * dim, sizeof(float) * dim);
        std::memcpy(h_states + p * sd, h_states + j * sd, sizeof(float) * sd);
        h_scores[p] = h_scores[j];
        h_stamps[p] = h_stamps[j];
      }
      ++p;
    }
  } else if (cold_) {
    rest.assign(h_keys, h_keys + m);
  }
  const int64_t from_host = p;
  if (cold_ && !rest.empty() && cold_->size() > 0) {
    const TableRows fetched = cold_->take(rest.data(), static_cast<int64_t>(rest.size()));
    std::copy(fetched.keys.begin(), fetched.keys.end(), h_keys + p);
    std::copy(fetched.values.begin(), fetched.values.end(), h_values + p * dim);
    std::copy(fetched.states.begin(), fetched.states.end(), h_states + p * sd);
    std::copy(fetched.scores.begin(), fetched.scores.end(), h_scores + p);
    std::copy(fetched.stamps.begin(), fetched.stamps.end(), h_stamps + p);
    p += fetched.size();
  }

  // Up, into hot (the batch pinned), then the batch itself; evictions of both to one list.
  int64_t* ev_count = s.counts.data() + 2;
  GENREC_CUDA_CHECK(cudaMemsetAsync(ev_count, 0, sizeof(int64_t), stream));
  const EvictedRows evicted{grow(s.ev_keys, m), grow(s.ev_rows, m * row_dim), grow(s.ev_scores, m),
                            ev_count, grow(s.ev_stamps, m)};
  if (p > 0) {
    uint64_t* up_keys = grow(s.up_keys, p);
    float* up_values = grow(s.up_values, p * dim);
    float* up_states = grow(s.up_states, p * sd);
    uint64_t* up_scores = grow(s.up_scores, p);
    uint64_t* up_stamps = grow(s.up_stamps, p);
    copy_async(up_keys, h_keys, sizeof(uint64_t) * p, cudaMemcpyHostToDevice, stream);
    copy_async(up_values, h_values, sizeof(float) * p * dim, cudaMemcpyHostToDevice, stream);
    copy_async(up_states, h_states, sizeof(float) * p * sd, cudaMemcpyHostToDevice, stream);
    copy_async(up_scores, h_scores, sizeof(uint64_t) * p, cudaMemcpyHostToDevice, stream);
    copy_async(up_stamps, h_stamps, sizeof(uint64_t) * p, cudaMemcpyHostToDevice, stream);
    hot_.insert_rows(up_keys, up_values, up_states, up_scores, p, stream, grow(s.up_stored, p),
                     &evicted, keys, n, up_stamps);
  }
  // Without misses nothing is inserted, so nothing can be evicted.
  hot_.find_or_insert(keys, n, values_out, stored, stream, nullptr, m > 0 ? &evicted : nullptr);
  int64_t* h_counts = s.h_counts.as<int64_t>();
  copy_async(h_counts + 2, ev_count, sizeof(int64_t), cudaMemcpyDeviceToHost, stream);
  copy_async(h_found, s.up_stored.data(), p, cudaMemcpyDeviceToHost, stream);
  if (from_host > 0) host_.erase(h_keys, from_host);  // while the GPU works
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
  const int64_t num_evicted = h_counts[2];

  // Host and cold rows hot could not take (their bucket held only keys of the batch) go to host,
  // and their occurrences get them instead of the initializer's row (kept_rows_kernel looks
  // them up by key: host's and cold's sorted together).
  std::vector<int64_t> kept_rows;
  int64_t kept_from_host = 0;
  for (int64_t j = 0; j < p; ++j) {
    if (h_found[j]) continue;
    kept_rows.push_back(j);
    if (j < from_host) ++kept_from_host;
  }
  std::sort(kept_rows.begin(), kept_rows.end(),
            [&](int64_t a, int64_t b) { return h_keys[a] < h_keys[b]; });
  TableRows kept;
  for (int64_t j : kept_rows) {
    kept.keys.push_back(h_keys[j]);
    kept.values.insert(kept.values.end(), h_values + j * dim, h_values + (j + 1) * dim);
    kept.states.insert(kept.states.end(), h_states + j * sd, h_states + (j + 1) * sd);
    kept.scores.push_back(h_scores[j]);
    kept.stamps.push_back(h_stamps[j]);
  }
  DeviceBuffer<uint64_t> kept_keys;
  DeviceBuffer<float> kept_values;
  if (kept.size() > 0) {
    kept_keys = DeviceBuffer<uint64_t>(kept.size(), stream);
    kept_values = DeviceBuffer<float>(kept.size() * dim, stream);
    copy_async(kept_keys.data(), kept.keys.data(), sizeof(uint64_t) * kept.size(),
               cudaMemcpyHostToDevice, stream);
    copy_async(kept_values.data(), kept.values.data(), sizeof(float) * kept.size() * dim,
               cudaMemcpyHostToDevice, stream);
    kept_rows_kernel<<<blocks_for(n), kBlock, 0, stream>>>(
        keys, n, kept_keys.data(), kept_values.data(), kept.size(), dim, values_out);
    GENREC_CUDA_LAUNCH_CHECK("tiered table kept rows");
  }

  // The evicted rows down in one copy, into host in one batch (with the kept rows).
  uint64_t* h_ev_keys = grow<uint64_t>(s.h_ev_keys, num_evicted);
  float* h_ev_rows = grow<float>(s.h_ev_rows, num_evicted * row_dim);
  uint64_t* h_ev_scores = grow<uint64_t>(s.h_ev_scores, num_evicted);
  uint64_t* h_ev_stamps = grow<uint64_t>(s.h_ev_stamps, num_evicted);
  copy_async(h_ev_keys, evicted.keys, sizeof(uint64_t) * num_evicted, cudaMemcpyDeviceToHost,
             stream);
  copy_async(h_ev_rows, evicted.rows, sizeof(float) * num_evicted * row_dim, cudaMemcpyDeviceToHost,
             stream);
  copy_async(h_ev_scores, evicted.scores, sizeof(uint64_t) * num_evicted, cudaMemcpyDeviceToHost,
             stream);
  copy_async(h_ev_stamps, evicted.stamps, sizeof(uint64_t) * num_evicted, cudaMemcpyDeviceToHost,
             stream);
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
  const int64_t total = num_evicted + kept.size();
  if (total > 0) {
    TableRows& rows = demoted_;
    rows.keys.resize(total);
    rows.values.resize(total * dim);
    rows.states.resize(total * sd);
    rows.scores.resize(total);
    rows.stamps.resize(total);
    // Rows come down as values then state; the host table takes them apart.
    parallel_for(num_evicted, [&](int64_t begin, int64_t end, int) {
      for (int64_t r = begin; r < end; ++r) {
        const float* row = h_ev_rows + r * row_dim;
        std::memcpy(rows.values.data() + r * dim, row, sizeof(float) * dim);
        std::memcpy(rows.states.data() + r * sd, row + dim, sizeof(float) * sd);
        rows.keys[r] = h_ev_keys[r];
        rows.scores[r] = h_ev_scores[r];
        rows.stamps[r] = h_ev_stamps[r];
      }
    });
    std::copy(kept.keys.begin(), kept.keys.end(), rows.keys.begin() + num_evicted);
    std::copy(kept.values.begin(), kept.values.end(), rows.values.begin() + num_evicted * dim);
    std::copy(kept.states.begin(), kept.states.end(), rows.states.begin() + num_evicted * sd);
    std::copy(kept.scores.begin(), kept.scores.end(), rows.scores.begin() + num_evicted);
    std::copy(kept.stamps.begin(), kept.stamps.end(), rows.stamps.begin() + num_evicted);
    store_below_hot(host_, cold_.get(), rows, removals_, stats_);
  }

  stats_.hot_hits += n - m - empties;  // repeats of a missed key count as hot hits
  stats_.host_hits += from_host;
  stats_.cold_hits += p - from_host;
  stats_.misses += m - p + empties;
  stats_.promoted += from_host - kept_from_host;
  stats_.fetched += (p - from_host) - (kept.size() - kept_from_host);
  stats_.demoted += num_evicted;
}

void CudaTieredTable::find(const uint64_t* keys, int64_t n, float* values_out, uint8_t* found,
                           cudaStream_t stream) const {
  check_batch(keys, n, values_out, "find");
  GENREC_CHECK(n == 0 || found != nullptr, "CUDA tiered table find: null found");
  if (n == 0) return;
  std::lock_guard<std::mutex> lock(mutex_);
  Scratch& s = scratch_;
  const int64_t dim = hot_.dim();
  hot_.find(keys, n, values_out, found, stream);
  const bool below = host_.size() > 0 || (cold_ && cold_->size() > 0);
  const int64_t m = below ? gather_misses(keys, found, n, false, true, nullptr, stream) : 0;
  if (m > 0) {
    float* h_values = grow<float>(s.h_values, m * dim);
    uint8_t* h_found = grow<uint8_t>(s.h_found, m);
    std::fill_n(h_found, m, 0);  // every gathered key missed hot
    find_below_hot(host_, cold_.get(), s.h_keys.as<uint64_t>(), m, h_values, h_found);
    float* up_values = grow(s.up_values, m * dim);
    uint8_t* up_found = grow(s.up_stored, m);
    copy_async(up_values, h_values, sizeof(float) * m * dim, cudaMemcpyHostToDevice, stream);
    copy_async(up_found, h_found, m, cudaMemcpyHostToDevice, stream);
    scatter_kernel<<<blocks_for(m * dim), kBlock, 0, stream>>>(
        up_values, up_found, s.miss_index.data(), m, dim, values_out, found);
    GENREC_CUDA_LAUNCH_CHECK("tiered table scatter");
  }
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
}

TableRows CudaTieredTable::export_rows(cudaStream_t stream) const {
  std::lock_guard<std::mutex> lock(mutex_);
  TableRows all = hot_.export_rows(0, stream);
  all.append(host_.export_rows());
  if (cold_) all.append(cold_->export_rows());
  // Merge the key-sorted tiers into one key order.
  std::vector<int64_t> order(all.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](int64_t a, int64_t b) { return all.keys[a] < all.keys[b]; });
  TableRows out;
  for (int64_t i : order) out.append_row(all, i);
  return out;
}

void CudaTieredTable::insert_rows(const TableRows& rows, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (rows.size() == 0) return;
  insert_rows_below_hot(host_, cold_.get(), rows, removals_, stats_, "CUDA tiered table",
                        [&] { hot_.erase(rows.keys, stream); });
}

void CudaTieredTable::erase(const std::vector<uint64_t>& keys, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  const int64_t n = static_cast<int64_t>(keys.size());
  if (n == 0) return;
  // The keys any tier held leave the table: hot's from its erased flags, the lower tiers' while
  // the GPU erases.
  DeviceBuffer<uint64_t> d_keys(n, stream);
  DeviceBuffer<uint8_t> d_erased(n, stream);
  std::vector<uint8_t> in_hot(n);
  copy_async(d_keys.data(), keys.data(), sizeof(uint64_t) * n, cudaMemcpyHostToDevice, stream);
  hot_.erase(d_keys.data(), n, stream, d_erased.data());
  copy_async(in_hot.data(), d_erased.data(), n, cudaMemcpyDeviceToHost, stream);
  std::vector<uint64_t> below = erase_below_hot(host_, cold_.get(), keys.data(), n);
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
  log_erased(std::move(below), keys.data(), in_hot.data(), n, removals_, hot_.step());
}

int64_t CudaTieredTable::size(cudaStream_t stream) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return hot_.size(stream) + host_.size() + (cold_ ? cold_->size() : 0);
}

TierStats CudaTieredTable::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void CudaTieredTable::reset_stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_ = TierStats{};
}

}  // namespace genrec::cuda
