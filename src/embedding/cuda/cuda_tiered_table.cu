// find_or_insert in batched steps, each crossing PCIe once per direction (in chunks):
// 1. hot.contains marks the occurrences in hot; a kernel gathers the others (no kEmptyKey), a
//    radix sort and a unique pass leave the distinct misses sorted on the device, and they come
//    to the host in one copy.
// 2. host.take_rows finds and removes them in one pass per chunk, straight into pinned staging
//    (row j of the misses at row j); each chunk goes up while the host takes the next.
// 3. a kernel compacts the taken rows (the promotions) into key order, insert_rows puts them
//    into hot, the whole batch pinned; then hot.find_or_insert runs the batch, so the hits and
//    promoted rows are found (one access each) and new keys get the initializer. Both hot
//    calls write their evicted rows to one device list.
// 4. the list comes down in chunks, each going into host (packed rows, no repacking) while the
//    next one copies.
#include "core/cuda/cuda_check.h"  // first: it configures fmt for nvcc

#include "embedding/cuda/cuda_tiered_table.h"

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_select.cuh>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <utility>

#include "core/error.h"
#include "core/thread_pool.h"

namespace genrec::cuda {
namespace {

constexpr int kBlock = 256;
// Host lookups and the copies of their rows run in up to kMaxChunks chunks of at least
// kChunkRows rows, so that one chunk's copy overlaps the next chunk's host work.
constexpr int64_t kChunkRows = 32768;
constexpr int kMaxChunks = 4;
// Timing events: the phase boundaries, then a (start, end) pair per upload and evicted chunk.
constexpr int kStart = 0, kLookupEnd = 1, kKeysCopied = 2, kUpdateStart = 3, kUpdateEnd = 4,
              kUpStart = 5, kEvStart = kUpStart + 2 * kMaxChunks,
              kNumEvents = kEvStart + 2 * kMaxChunks;

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

int chunks_for(int64_t rows) {
  return static_cast<int>(std::clamp<int64_t>(rows / kChunkRows, 1, kMaxChunks));
}

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

// Row k of the promoted rows (keys, values, states, scores) is row src[k] of the misses (src
// null: row k); the keys are on the device already, the rest came up as taken.
__global__ void __launch_bounds__(kBlock)
    compact_kernel(const int64_t* src, int64_t p, const uint64_t* keys, const float* values,
                   const float* states, const uint64_t* scores, int64_t dim, int64_t sd,
                   uint64_t* keys_out, float* values_out, float* states_out, uint64_t* scores_out) {
  const int64_t row = dim + sd, total = p * row, stride = static_cast<int64_t>(gridDim.x) * kBlock;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x; e < total;
       e += stride) {
    const int64_t k = e / row, c = e - k * row;
    const int64_t r = src != nullptr ? src[k] : k;
    if (c < dim) {
      values_out[k * dim + c] = values[r * dim + c];
    } else {
      states_out[k * sd + c - dim] = states[r * sd + c - dim];
    }
    if (c == 0) {
      keys_out[k] = keys[r];
      scores_out[k] = scores[r];
    }
  }
}

// Occurrences of the promoted keys (sorted) that hot did not store get their host rows.
__global__ void __launch_bounds__(kBlock)
    kept_rows_kernel(const uint64_t* keys, int64_t n, const uint64_t* kept,
                     const uint8_t* kept_stored, const float* rows, int64_t num_kept, int64_t dim,
                     float* values_out) {
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
    if (lo == num_kept || kept[lo] != key || kept_stored[lo]) continue;
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
const CudaTableOptions& checked_hot(const CudaTableOptions& hot, const TableOptions& host) {
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
  GENREC_CHECK(host.max_capacity == 0,
               "CUDA tiered table: the host tier must be unbounded (max_capacity {}), it has no "
               "tier below to spill to",
               host.max_capacity);
  return hot;
}

}  // namespace

CudaTieredTable::CudaTieredTable(const CudaTableOptions& hot, const TableOptions& host)
    : hot_(checked_hot(hot, host)), host_(host) {
  for (int e = 0; e < kNumEvents; ++e) scratch_.events.emplace_back(true);
}

double CudaTieredTable::elapsed(int from, int to) const {
  float ms = 0.0f;
  GENREC_CUDA_CHECK(
      cudaEventElapsedTime(&ms, scratch_.events[from].get(), scratch_.events[to].get()));
  return ms / 1e3;
}

void CudaTieredTable::set_step(uint64_t step) {
  hot_.set_step(step);
  host_.set_step(step);
}

void CudaTieredTable::set_epoch(uint64_t epoch) {
  hot_.set_epoch(epoch);
  host_.set_epoch(epoch);
}

int64_t CudaTieredTable::gather_misses(const uint64_t* keys, const uint8_t* flags, int64_t n,
                                       bool unique, int64_t* empties, TierPhaseTimes& times,
                                       cudaStream_t stream) const {
  Scratch& s = scratch_;
  uint64_t* miss = grow(s.miss, n);
  int64_t* counts = grow(s.counts, 4);
  int64_t* h_counts = grow<int64_t>(s.h_counts, 4);
  GENREC_CUDA_CHECK(cudaMemsetAsync(counts, 0, 2 * sizeof(int64_t), stream));
  gather_kernel<<<blocks_for(n), kBlock, 0, stream>>>(
      keys, flags, n, miss, unique ? nullptr : grow(s.miss_index, n),
      reinterpret_cast<unsigned long long*>(counts));
  GENREC_CUDA_LAUNCH_CHECK("tiered table gather");
  copy_async(h_counts, counts, 2 * sizeof(int64_t), cudaMemcpyDeviceToHost, stream);
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
  const int64_t occurrences = h_counts[0];
  if (empties != nullptr) *empties = h_counts[1];
  if (unique && occurrences > 0) {
    // Sorted into `sorted`, deduplicated back into `miss`, the count to counts[3].
    uint64_t* sorted = grow(s.sorted, occurrences);
    size_t sort_bytes = 0, unique_bytes = 0;
    GENREC_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(nullptr, sort_bytes, miss, sorted, occurrences,
                                                     0, 64, stream));
    GENREC_CUDA_CHECK(cub::DeviceSelect::Unique(nullptr, unique_bytes, sorted, miss, counts + 3,
                                                occurrences, stream));
    uint8_t* temp = grow(s.sort_temp, static_cast<int64_t>(std::max(sort_bytes, unique_bytes)));
    GENREC_CUDA_CHECK(
        cub::DeviceRadixSort::SortKeys(temp, sort_bytes, miss, sorted, occurrences, 0, 64, stream));
    GENREC_CUDA_CHECK(cub::DeviceSelect::Unique(temp, unique_bytes, sorted, miss, counts + 3,
                                                occurrences, stream));
    copy_async(h_counts + 3, counts + 3, sizeof(int64_t), cudaMemcpyDeviceToHost, stream);
  }
  // All occurrences' slots come down: the distinct count is not known yet, and a second wait
  // for it would cost more than the extra bytes.
  event(kLookupEnd).record(stream);
  copy_async(grow<uint64_t>(s.h_keys, occurrences), miss, sizeof(uint64_t) * occurrences,
             cudaMemcpyDeviceToHost, stream);
  event(kKeysCopied).record(stream);
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
  times.device_lookup += elapsed(kStart, kLookupEnd);
  times.key_copy += elapsed(kLookupEnd, kKeysCopied);
  return unique && occurrences > 0 ? h_counts[3] : occurrences;
}

void CudaTieredTable::find_or_insert(const uint64_t* keys, int64_t n, float* values_out,
                                     uint8_t* stored, cudaStream_t stream) {
  check_batch(keys, n, values_out, "find_or_insert");
  if (n == 0) return;
  std::lock_guard<std::mutex> lock(mutex_);
  const auto call_start = Clock::now();
  TierPhaseTimes& times = times_.find_or_insert;
  Scratch& s = scratch_;
  const int64_t dim = hot_.dim(), sd = hot_.state_dim(), row_dim = dim + sd;

  // The distinct keys that missed hot, sorted: on the host, and on the device in scratch miss.
  event(kStart).record(stream);
  uint8_t* in_hot = grow(s.flags, n);
  hot_.contains(keys, n, in_hot, stream);
  int64_t empties = 0;
  const int64_t m = gather_misses(keys, in_hot, n, true, &empties, times, stream);
  const uint64_t* h_keys = s.h_keys.as<uint64_t>();

  // Those host holds are taken out of it, in chunks, each going up (as taken: row j of the
  // misses at row j) while the host takes the next; src lists the taken rows in key order.
  float* h_values = grow<float>(s.h_values, m * dim);
  float* h_states = grow<float>(s.h_states, m * sd);
  uint64_t* h_scores = grow<uint64_t>(s.h_scores, m);
  uint64_t* h_stamps = grow<uint64_t>(s.h_stamps, m);
  uint8_t* h_found = grow<uint8_t>(s.h_found, m);
  int64_t* h_src = grow<int64_t>(s.h_src, m);
  float* raw_values = grow(s.raw_values, m * dim);
  float* raw_states = grow(s.raw_states, m * sd);
  uint64_t* raw_scores = grow(s.raw_scores, m);
  const int up_chunks = m > 0 && host_.size() > 0 ? chunks_for(m) : 0;
  bool uploaded[kMaxChunks] = {};
  int64_t p = 0;
  for (int c = 0; c < up_chunks; ++c) {
    const int64_t j0 = m * c / up_chunks, j1 = m * (c + 1) / up_chunks, len = j1 - j0;
    const auto t0 = Clock::now();
    const int64_t taken =
        host_.take_rows(h_keys + j0, len, h_values + j0 * dim, h_found + j0,
                        sd > 0 ? h_states + j0 * sd : nullptr, h_scores + j0, h_stamps + j0);
    times.host_lookup += seconds_since(t0);
    if (taken == 0) continue;
    uploaded[c] = true;
    event(kUpStart + 2 * c).record(stream);
    copy_async(raw_values + j0 * dim, h_values + j0 * dim, sizeof(float) * len * dim,
               cudaMemcpyHostToDevice, stream);
    copy_async(raw_states + j0 * sd, h_states + j0 * sd, sizeof(float) * len * sd,
               cudaMemcpyHostToDevice, stream);
    copy_async(raw_scores + j0, h_scores + j0, sizeof(uint64_t) * len, cudaMemcpyHostToDevice,
               stream);
    event(kUpStart + 2 * c + 1).record(stream);
    for (int64_t j = j0; j < j1; ++j) {  // while the chunk goes up
      if (h_found[j]) h_src[p++] = j;
    }
  }

  // Compacted into key order, into hot (the batch pinned), then the batch itself; evictions of
  // both to one list.
  event(kUpdateStart).record(stream);
  int64_t* ev_count = s.counts.data() + 2;
  GENREC_CUDA_CHECK(cudaMemsetAsync(ev_count, 0, sizeof(int64_t), stream));
  const EvictedRows evicted{grow(s.ev_keys, m), grow(s.ev_rows, m * row_dim), grow(s.ev_scores, m),
                            ev_count};
  uint64_t* up_keys = grow(s.up_keys, p);
  float* up_values = grow(s.up_values, p * dim);
  uint8_t* up_stored = grow(s.up_stored, p);
  if (p > 0) {
    const int64_t* src = nullptr;  // identity when every miss was taken
    if (p < m) {
      copy_async(grow(s.src, p), h_src, sizeof(int64_t) * p, cudaMemcpyHostToDevice, stream);
      src = s.src.data();
    }
    float* up_states = grow(s.up_states, p * sd);
    uint64_t* up_scores = grow(s.up_scores, p);
    compact_kernel<<<blocks_for(p * row_dim), kBlock, 0, stream>>>(
        src, p, s.miss.data(), raw_values, raw_states, raw_scores, dim, sd, up_keys, up_values,
        up_states, up_scores);
    GENREC_CUDA_LAUNCH_CHECK("tiered table compact");
    hot_.insert_rows(up_keys, up_values, up_states, up_scores, p, stream, up_stored, &evicted, keys,
                     n);
  }
  // Without misses nothing is inserted, so nothing can be evicted.
  hot_.find_or_insert(keys, n, values_out, stored, stream, nullptr, m > 0 ? &evicted : nullptr);
  event(kUpdateEnd).record(stream);
  int64_t* h_counts = s.h_counts.as<int64_t>();
  uint8_t* h_stored = grow<uint8_t>(s.h_stored, p);
  copy_async(h_counts + 2, ev_count, sizeof(int64_t), cudaMemcpyDeviceToHost, stream);
  copy_async(h_stored, up_stored, p, cudaMemcpyDeviceToHost, stream);
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
  const int64_t num_evicted = h_counts[2];

  // The evicted rows come down in chunks, each going into host while the next copies.
  uint64_t* h_ev_keys = grow<uint64_t>(s.h_ev_keys, num_evicted);
  float* h_ev_rows = grow<float>(s.h_ev_rows, num_evicted * row_dim);
  uint64_t* h_ev_scores = grow<uint64_t>(s.h_ev_scores, num_evicted);
  const int ev_chunks = num_evicted > 0 ? chunks_for(num_evicted) : 0;
  auto ev_range = [&](int c) {
    return std::pair{num_evicted * c / ev_chunks, num_evicted * (c + 1) / ev_chunks};
  };
  for (int c = 0; c < ev_chunks; ++c) {
    const auto [r0, r1] = ev_range(c);
    event(kEvStart + 2 * c).record(stream);
    copy_async(h_ev_keys + r0, evicted.keys + r0, sizeof(uint64_t) * (r1 - r0),
               cudaMemcpyDeviceToHost, stream);
    copy_async(h_ev_rows + r0 * row_dim, evicted.rows + r0 * row_dim,
               sizeof(float) * (r1 - r0) * row_dim, cudaMemcpyDeviceToHost, stream);
    copy_async(h_ev_scores + r0, evicted.scores + r0, sizeof(uint64_t) * (r1 - r0),
               cudaMemcpyDeviceToHost, stream);
    event(kEvStart + 2 * c + 1).record(stream);
  }

  // Host rows hot could not take (their bucket held only keys of the batch) go back into host,
  // and their occurrences get them instead of the initializer's row.
  TableRows kept;
  for (int64_t j = 0; j < p; ++j) {
    if (h_stored[j]) continue;
    const int64_t r = p < m ? h_src[j] : j;
    kept.keys.push_back(h_keys[r]);
    kept.values.insert(kept.values.end(), h_values + r * dim, h_values + (r + 1) * dim);
    kept.states.insert(kept.states.end(), h_states + r * sd, h_states + (r + 1) * sd);
    kept.scores.push_back(h_scores[r]);
    kept.stamps.push_back(h_stamps[r]);
  }
  if (kept.size() > 0) {
    kept_rows_kernel<<<blocks_for(n), kBlock, 0, stream>>>(keys, n, up_keys, up_stored, up_values,
                                                           p, dim, values_out);
    GENREC_CUDA_LAUNCH_CHECK("tiered table kept rows");
    const auto t0 = Clock::now();
    host_.insert_rows(kept);
    times.host_insert += seconds_since(t0);
  }
  for (int c = 0; c < ev_chunks; ++c) {
    const auto [r0, r1] = ev_range(c);
    event(kEvStart + 2 * c + 1).synchronize();
    const auto t0 = Clock::now();
    host_.insert_packed_rows(h_ev_keys + r0, r1 - r0, h_ev_rows + r0 * row_dim, h_ev_scores + r0);
    times.host_insert += seconds_since(t0);
  }
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));

  for (int c = 0; c < up_chunks; ++c) {
    if (uploaded[c]) times.upload += elapsed(kUpStart + 2 * c, kUpStart + 2 * c + 1);
  }
  times.hot_update += elapsed(kUpdateStart, kUpdateEnd);
  for (int c = 0; c < ev_chunks; ++c) {
    times.evicted_copy += elapsed(kEvStart + 2 * c, kEvStart + 2 * c + 1);
  }
  times.total += seconds_since(call_start);
  ++times.calls;
  stats_.hot_hits += n - m - empties;  // repeats of a missed key count as hot hits
  stats_.host_hits += p;
  stats_.misses += m - p + empties;
  stats_.promoted += p - kept.size();
  stats_.demoted += num_evicted;
}

void CudaTieredTable::find(const uint64_t* keys, int64_t n, float* values_out, uint8_t* found,
                           cudaStream_t stream) const {
  check_batch(keys, n, values_out, "find");
  GENREC_CHECK(n == 0 || found != nullptr, "CUDA tiered table find: null found");
  if (n == 0) return;
  std::lock_guard<std::mutex> lock(mutex_);
  const auto call_start = Clock::now();
  TierPhaseTimes& times = times_.find;
  Scratch& s = scratch_;
  const int64_t dim = hot_.dim();
  event(kStart).record(stream);
  hot_.find(keys, n, values_out, found, stream);
  // Every missing occurrence is looked up (no dedup: nothing moves, so repeats are harmless).
  const bool look_in_host = host_.size() > 0;
  const int64_t m = look_in_host ? gather_misses(keys, found, n, false, nullptr, times, stream) : 0;
  if (!look_in_host) {
    event(kLookupEnd).record(stream);
    GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
    times.device_lookup += elapsed(kStart, kLookupEnd);
  } else if (m > 0) {
    // Looked up in chunks, each going up while the host looks up the next.
    const uint64_t* h_keys = s.h_keys.as<uint64_t>();
    float* h_values = grow<float>(s.h_values, m * dim);
    uint8_t* h_found = grow<uint8_t>(s.h_found, m);
    float* up_values = grow(s.up_values, m * dim);
    uint8_t* up_found = grow(s.up_stored, m);
    const int chunks = chunks_for(m);
    for (int c = 0; c < chunks; ++c) {
      const int64_t j0 = m * c / chunks, j1 = m * (c + 1) / chunks, len = j1 - j0;
      const auto t0 = Clock::now();
      host_.find(h_keys + j0, len, h_values + j0 * dim, h_found + j0);
      times.host_lookup += seconds_since(t0);
      event(kUpStart + 2 * c).record(stream);
      copy_async(up_values + j0 * dim, h_values + j0 * dim, sizeof(float) * len * dim,
                 cudaMemcpyHostToDevice, stream);
      copy_async(up_found + j0, h_found + j0, len, cudaMemcpyHostToDevice, stream);
      event(kUpStart + 2 * c + 1).record(stream);
    }
    event(kUpdateStart).record(stream);
    scatter_kernel<<<blocks_for(m * dim), kBlock, 0, stream>>>(
        up_values, up_found, s.miss_index.data(), m, dim, values_out, found);
    GENREC_CUDA_LAUNCH_CHECK("tiered table scatter");
    event(kUpdateEnd).record(stream);
    GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (int c = 0; c < chunks; ++c) {
      times.upload += elapsed(kUpStart + 2 * c, kUpStart + 2 * c + 1);
    }
    times.hot_update += elapsed(kUpdateStart, kUpdateEnd);
  }
  times.total += seconds_since(call_start);
  ++times.calls;
}

TableRows CudaTieredTable::export_rows(cudaStream_t stream) const {
  std::lock_guard<std::mutex> lock(mutex_);
  TableRows all = hot_.export_rows(0, stream);
  all.append(host_.export_rows());
  // Merge the two key-sorted tiers into one key order.
  std::vector<int64_t> order(all.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](int64_t a, int64_t b) { return all.keys[a] < all.keys[b]; });
  TableRows out;
  for (int64_t i : order) out.append_row(all, i);
  return out;
}

int64_t CudaTieredTable::size(cudaStream_t stream) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return hot_.size(stream) + host_.size();
}

TierStats CudaTieredTable::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

TierTimes CudaTieredTable::times() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return times_;
}

void CudaTieredTable::reset_stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_ = TierStats{};
  times_ = TierTimes{};
}

}  // namespace genrec::cuda
