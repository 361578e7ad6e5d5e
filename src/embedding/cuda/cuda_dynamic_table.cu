// Inserting and assigning calls run in up to three kernels, so that duplicates and eviction
// have defined results without sorting the batch:
// 1. lookup (lock-free, no slot changes): present keys get their slot, mark it as this batch's
//    (atomicMax of batch << 32 | (i + 1): the high half protects the row from eviction for the
//    rest of the call, the low half ends up naming the key's last occurrence), update scores,
//    and find_or_insert copies their rows out. Absent keys are left "pending".
// 2. insert (pending keys only): probe again (a duplicate may have inserted the key meanwhile;
//    lock-free, see the publication order at the kernel), else under the bucket lock probe once
//    more, then take a free slot, else evict the unmarked slot with the lowest (score, key);
//    the new row is initialized and marked before its key is stored.
// 3. write (insert_or_assign, assign, custom scores): only the occurrence whose index the
//    mark names writes the row's values and custom score, so each row is written by exactly
//    one tile and the last occurrence wins, as on the CPU.
// Because every present key of the batch is marked before any eviction can happen, no row of
// the batch's keys is ever evicted by the call.
#include "core/cuda/cuda_check.h"  // first: it configures fmt for nvcc

#include "embedding/cuda/cuda_dynamic_table.h"

#include <algorithm>
#include <bit>
#include <numeric>

#include "core/cuda/caching_allocator.h"
#include "embedding/cuda/bucket_probe.cuh"
#include "embedding/cuda/table_storage.h"

namespace genrec::cuda {

enum class BatchOp : uint8_t { kFindOrInsert, kInsertOrAssign, kAssign };

namespace table {
namespace {

constexpr int64_t kPending = -2;  // slots[i] after lookup: absent, to be inserted
constexpr uint64_t kLow32 = 0xFFFFFFFFull;

__device__ __forceinline__ uint64_t mark_of(uint32_t batch, int64_t i) {
  return (static_cast<uint64_t>(batch) << 32) | static_cast<uint64_t>(i + 1);
}

struct BatchArgs {
  const uint64_t* keys = nullptr;
  int64_t n = 0;
  const float* values_in = nullptr;
  float* values_out = nullptr;
  uint8_t* flags = nullptr;  // stored (find_or_insert, insert_or_assign) or found (assign)
  const uint64_t* custom = nullptr;
  int64_t* slots = nullptr;  // per key: global slot, -1 (absent / not stored) or kPending
  EvictedRows evicted;
  InitParams init;
  int64_t dim = 0, state_dim = 0;
  uint64_t step = 0, epoch = 0;
  uint32_t batch = 0;
  EvictionPolicy policy = EvictionPolicy::kLru;
  BatchOp op = BatchOp::kFindOrInsert;
};

__global__ void __launch_bounds__(kThreads)
    find_kernel(TableView t, const uint64_t* keys, int64_t n, float* values, uint8_t* found,
                float* states, uint64_t* scores, int64_t dim, int64_t state_dim) {
  for_each_key(n, [&](const Tile& tile, int64_t i) {
    const uint64_t key = keys[i];
    uint64_t b = 0;
    const int slot = locate<false>(tile, t, key, b);
    if (tile.thread_rank() == 0 && found != nullptr) found[i] = slot >= 0;
    if (slot < 0) return;
    const uint64_t s = b * kBucketSlots + slot;
    const float* row = row_ptr(t, s);
    if (values != nullptr) tile_copy<false>(tile, values + i * dim, row, dim);
    if (states != nullptr) tile_copy<false>(tile, states + i * state_dim, row + dim, state_dim);
    if (scores != nullptr && tile.thread_rank() == 0) scores[i] = t.scores[s];
  });
}

__global__ void __launch_bounds__(kThreads) lookup_kernel(TableView t, BatchArgs a) {
  for_each_key(a.n, [&](const Tile& tile, int64_t i) {
    const uint64_t key = a.keys[i];
    const bool lead = tile.thread_rank() == 0;
    uint64_t b = 0;
    const int slot = locate<false>(tile, t, key, b);
    if (slot < 0) {
      const bool pending = key != kEmptyKey && a.op != BatchOp::kAssign;
      if (lead) {
        a.slots[i] = pending ? kPending : -1;
        if (!pending && a.flags != nullptr) a.flags[i] = 0;
      }
      if (key == kEmptyKey && a.op == BatchOp::kFindOrInsert) {
        tile_init_row(tile, a.init, key, a.values_out + i * a.dim, a.dim, nullptr, 0);
      }
      return;
    }
    const uint64_t s = b * kBucketSlots + slot;
    if (lead) {
      a.slots[i] = static_cast<int64_t>(s);
      atomicMax(reinterpret_cast<unsigned long long*>(t.marks + s), mark_of(a.batch, i));
      touch_score(t.scores + s, a.policy, false, a.step, a.epoch);
      if (a.flags != nullptr) a.flags[i] = 1;
    }
    if (a.op == BatchOp::kFindOrInsert) {
      tile_copy<false>(tile, a.values_out + i * a.dim, row_ptr(t, s), a.dim);
    }
  });
}

// The slot for a new key in bucket `base`: a free one (lowest index, from the lanes' digests
// `word`), else the unmarked one with the lowest (score, key), else -1. Called under the
// bucket lock. *evicting says whether the slot holds a row (victim_key, victim_score).
__device__ __forceinline__ int choose_slot(const Tile& tile, const TableView& t, uint64_t base,
                                           uint64_t word, uint32_t batch, bool* evicting,
                                           uint64_t* victim_key, uint64_t* victim_score) {
  const int lane = static_cast<int>(tile.thread_rank());
  int free_slot = -1;
  for (int j = kSlotsPerLane - 1; j >= 0; --j) {
    if (((word >> (8 * j)) & 0xFF) == 0) free_slot = lane * kSlotsPerLane + j;
  }
  const unsigned frees = tile.ballot(free_slot >= 0);
  *evicting = false;
  if (frees != 0) return tile.shfl(free_slot, __ffs(frees) - 1);
  // A full bucket: only now read its keys, marks and scores.
  int best = -1;
  uint64_t best_score = 0, best_key = 0;
  for (int j = 0; j < kSlotsPerLane; ++j) {
    const int s = lane * kSlotsPerLane + j;
    if ((load_relaxed(t.marks + base + s) >> 32) == batch) continue;  // a key of this batch
    const uint64_t k = load_relaxed(t.keys + base + s);
    const uint64_t sc = load_relaxed(t.scores + base + s);
    if (best < 0 || sc < best_score || (sc == best_score && k < best_key)) {
      best = s;
      best_score = sc;
      best_key = k;
    }
  }
  for (int o = kTile / 2; o > 0; o >>= 1) {
    const uint64_t os = tile.shfl_xor(best_score, o), ok = tile.shfl_xor(best_key, o);
    const int ob = tile.shfl_xor(best, o);
    if (ob >= 0 && (best < 0 || os < best_score || (os == best_score && ok < best_key))) {
      best = ob;
      best_score = os;
      best_key = ok;
    }
  }
  *evicting = best >= 0;
  *victim_key = best_key;
  *victim_score = best_score;
  return best;
}

// Insertion publishes a new row like a release: row, mark, score and digest are written, every
// lane fences, and only then lane 0 stores the key. A lock-free probe that sees the key and
// then fences (acquire) therefore sees the whole row, so duplicates of a key inserted earlier
// in the call skip the lock (a hot new key would otherwise serialize its whole batch).
__global__ void __launch_bounds__(kThreads) insert_kernel(TableView t, BatchArgs a) {
  for_each_key(a.n, [&](const Tile& tile, int64_t i) {
    if (a.slots[i] != kPending) return;
    const int lane = static_cast<int>(tile.thread_rank());
    const uint64_t key = a.keys[i];
    const uint64_t h = hash_key(key), b = h & t.bucket_mask, base = b * kBucketSlots;
    const uint32_t digest = digest_of(h);
    const int64_t row_dim = a.dim + a.state_dim;
    int slot = probe<true>(tile, t, b, key, digest);
    bool inserted = false;
    if (slot >= 0) {
      __threadfence();  // acquire: the row published with the key
    } else {
      lock_bucket(tile, t.locks + b);
      const uint64_t word = lane_digests<true>(tile, t, b);
      slot = find_in_bucket<true>(tile, t, b, word, key, digest);
      if (slot < 0) {
        bool evicting = false;
        uint64_t victim_key = 0, victim_score = 0;
        slot = choose_slot(tile, t, base, word, a.batch, &evicting, &victim_key, &victim_score);
        if (slot >= 0) {
          inserted = true;
          float* row = row_ptr(t, base + slot);
          if (evicting && a.evicted.count != nullptr) {
            unsigned long long pos = 0;
            if (lane == 0) {
              pos = atomicAdd(reinterpret_cast<unsigned long long*>(a.evicted.count), 1ull);
            }
            pos = tile.shfl(pos, 0);
            if (lane == 0) {
              a.evicted.keys[pos] = victim_key;
              if (a.evicted.scores != nullptr) a.evicted.scores[pos] = victim_score;
            }
            if (a.evicted.rows != nullptr) {
              tile_copy<true>(tile, a.evicted.rows + pos * row_dim, row, row_dim);
            }
            tile.sync();  // the victim's row is read before the new row overwrites it
          }
          // insert_or_assign's values come in the write kernel; the state is initial either way.
          tile_init_row(tile, a.init, key, row, a.op == BatchOp::kFindOrInsert ? a.dim : 0,
                        row + a.dim, a.state_dim);
          if (lane == 0) {
            store_relaxed(t.marks + base + slot, mark_of(a.batch, i));
            if (a.policy == EvictionPolicy::kCustom) {
              store_relaxed(t.scores + base + slot, a.custom[i]);
            } else {
              touch_score(t.scores + base + slot, a.policy, true, a.step, a.epoch);
            }
            t.digests[base + slot] = static_cast<uint8_t>(digest);
            if (!evicting) atomicAdd(t.size, 1ull);
          }
          __threadfence();  // release: everything above before the key
          tile.sync();
          if (lane == 0) store_relaxed(t.keys + base + slot, key);
        }
      }
      unlock_bucket(tile, t.locks + b);
    }
    if (slot >= 0 && !inserted && lane == 0) {  // inserted by an earlier duplicate of this call
      atomicMax(reinterpret_cast<unsigned long long*>(t.marks + base + slot), mark_of(a.batch, i));
      touch_score(t.scores + base + slot, a.policy, false, a.step, a.epoch);
    }
    // The row cannot change for the rest of the call: its slot carries this batch's mark.
    const int64_t s = slot >= 0 ? static_cast<int64_t>(base + slot) : -1;
    if (lane == 0) {
      a.slots[i] = s;
      if (a.flags != nullptr) a.flags[i] = slot >= 0;
    }
    if (a.op == BatchOp::kFindOrInsert) {
      float* out = a.values_out + i * a.dim;
      if (s >= 0) {
        tile_copy<true>(tile, out, row_ptr(t, s), a.dim);
      } else {
        tile_init_row(tile, a.init, key, out, a.dim, nullptr, 0);
      }
    }
  });
}

__global__ void __launch_bounds__(kThreads) write_kernel(TableView t, BatchArgs a) {
  for_each_key(a.n, [&](const Tile& tile, int64_t i) {
    const int64_t s = a.slots[i];
    if (s < 0 || (t.marks[s] & kLow32) != static_cast<uint64_t>(i + 1)) return;
    if (a.values_in != nullptr)
      tile_copy<false>(tile, row_ptr(t, s), a.values_in + i * a.dim, a.dim);
    if (a.custom != nullptr && tile.thread_rank() == 0) t.scores[s] = a.custom[i];
  });
}

__global__ void __launch_bounds__(kThreads)
    erase_kernel(TableView t, const uint64_t* keys, int64_t n, uint8_t* erased) {
  for_each_key(n, [&](const Tile& tile, int64_t i) {
    const uint64_t key = keys[i];
    uint64_t b = 0;
    const int slot = locate<true>(tile, t, key, b);
    if (tile.thread_rank() != 0) return;
    bool done = false;
    if (slot >= 0) {
      // Duplicates race for the same slot: exactly one CAS frees it.
      auto* word = reinterpret_cast<unsigned long long*>(t.keys + b * kBucketSlots + slot);
      done = atomicCAS(word, key, kEmptyKey) == key;
      if (done) {
        t.digests[b * kBucketSlots + slot] = 0;  // free: no insertion runs during an erase
        atomicAdd(t.size, ~0ull);                // -1
      }
    }
    if (erased != nullptr) erased[i] = done;
  });
}

__global__ void __launch_bounds__(kThreads)
    export_kernel(TableView t, int64_t offset, int64_t end, uint64_t min_score, uint64_t* keys_out,
                  float* values_out, float* states_out, uint64_t* scores_out,
                  unsigned long long* count, int64_t dim, int64_t state_dim) {
  const Tile tile = cg::tiled_partition<kTile>(cg::this_thread_block());
  const int lane = static_cast<int>(tile.thread_rank());
  const int64_t tiles = static_cast<int64_t>(gridDim.x) * kTilesPerBlock;
  for (int64_t first =
           offset +
           (static_cast<int64_t>(blockIdx.x) * kTilesPerBlock + tile.meta_group_rank()) * kTile;
       first < end; first += tiles * kTile) {
    const int64_t s = first + lane;
    uint64_t key = kEmptyKey, score = 0;
    bool take = false;
    if (s < end) {
      key = t.keys[s];
      if (key != kEmptyKey) {
        score = t.scores[s];
        take = score >= min_score;
      }
    }
    const unsigned taken = tile.ballot(take);
    if (taken == 0) continue;
    unsigned long long at = 0;
    if (lane == 0) at = atomicAdd(count, static_cast<unsigned long long>(__popc(taken)));
    at = tile.shfl(at, 0);
    if (take) {
      const unsigned long long out = at + __popc(taken & ((1u << lane) - 1));
      keys_out[out] = key;
      if (scores_out != nullptr) scores_out[out] = score;
    }
    for (unsigned rest = taken; rest != 0; rest &= rest - 1) {
      const int j = __ffs(rest) - 1;
      const unsigned long long out = at + __popc(taken & ((1u << j) - 1));
      const float* row = row_ptr(t, first + j);
      tile_copy<false>(tile, values_out + out * dim, row, dim);
      if (states_out != nullptr)
        tile_copy<false>(tile, states_out + out * state_dim, row + dim, state_dim);
    }
  }
}

// Moves every row of `from` into the larger `to`; rows whose new bucket is full are counted in
// *failures (the caller retries with more buckets).
__global__ void __launch_bounds__(kThreads)
    rehash_kernel(TableView from, TableView to, int64_t slots, int64_t row_dim,
                  unsigned long long* failures) {
  for_each_key(slots, [&](const Tile& tile, int64_t s) {
    const uint64_t key = from.keys[s];
    if (key == kEmptyKey) return;
    const int lane = static_cast<int>(tile.thread_rank());
    const uint64_t h = hash_key(key), b = h & to.bucket_mask, base = b * kBucketSlots;
    lock_bucket(tile, to.locks + b);
    const uint64_t word = lane_digests<true>(tile, to, b);
    int free_slot = -1;
    for (int j = kSlotsPerLane - 1; j >= 0; --j) {
      if (((word >> (8 * j)) & 0xFF) == 0) free_slot = lane * kSlotsPerLane + j;
    }
    const unsigned frees = tile.ballot(free_slot >= 0);
    if (frees != 0) {
      const int slot = tile.shfl(free_slot, __ffs(frees) - 1);
      tile_copy<false>(tile, row_ptr(to, base + slot), row_ptr(from, s), row_dim);
      if (lane == 0) {
        store_relaxed(to.keys + base + slot, key);
        to.digests[base + slot] = static_cast<uint8_t>(digest_of(h));
        to.scores[base + slot] = from.scores[s];
        atomicAdd(to.size, 1ull);
      }
    } else if (lane == 0) {
      atomicAdd(failures, 1ull);
    }
    unlock_bucket(tile, to.locks + b);
  });
}

unsigned grid_for_keys(int64_t n) {
  const int64_t blocks = (n + kTilesPerBlock - 1) / kTilesPerBlock;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, int64_t{1} << 22));
}

int64_t buckets_for(int64_t capacity) {
  const int64_t buckets = std::max<int64_t>(1, (capacity + kBucketSlots - 1) / kBucketSlots);
  return static_cast<int64_t>(std::bit_ceil(static_cast<uint64_t>(buckets)));
}

}  // namespace
}  // namespace table

using namespace table;

CudaDynamicTable::CudaDynamicTable(const CudaTableOptions& options) : options_(options) {
  GENREC_CHECK(options.dim > 0, "CUDA dynamic table: dim must be positive, got {}", options.dim);
  GENREC_CHECK(options.capacity > 0, "CUDA dynamic table: capacity must be positive, got {}",
               options.capacity);
  GENREC_CHECK(options.initializer.scale >= 0.0f, "CUDA dynamic table: initializer scale {} < 0",
               options.initializer.scale);
  state_dim_ = optimizer_state_dim(options.optimizer, options.dim);
  storage_ = std::make_unique<TableStorage>(buckets_for(options.capacity), (row_dim() + 3) / 4 * 4,
                                            options.max_hbm_row_bytes);
  GENREC_CUDA_CHECK(cudaEventCreateWithFlags(&last_, cudaEventDisableTiming));
}

CudaDynamicTable::~CudaDynamicTable() {
  if (last_ != nullptr) cudaEventDestroy(last_);
}

int64_t CudaDynamicTable::capacity() const {
  return storage_->slots();
}

int64_t CudaDynamicTable::host_slots() const {
  return storage_->host_slots();
}

std::unique_lock<std::mutex> CudaDynamicTable::begin(cudaStream_t stream) const {
  std::unique_lock<std::mutex> lock(mutex_);
  GENREC_CUDA_CHECK(cudaStreamWaitEvent(stream, last_, 0));
  return lock;
}

void CudaDynamicTable::end(cudaStream_t stream) const {
  GENREC_CUDA_CHECK(cudaEventRecord(last_, stream));
}

int64_t CudaDynamicTable::size(cudaStream_t stream) const {
  unsigned long long size = 0;
  {
    auto lock = begin(stream);
    GENREC_CUDA_CHECK(cudaMemcpyAsync(&size, storage_->view().size, sizeof(size),
                                      cudaMemcpyDeviceToHost, stream));
    end(stream);
  }
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
  return static_cast<int64_t>(size);
}

void CudaDynamicTable::check_batch(const uint64_t* keys, int64_t n, const uint64_t* scores,
                                   const char* op) const {
  GENREC_CHECK(n >= 0 && n < int64_t{0xFFFFFFFF},
               "CUDA dynamic table {}: batch size {} outside [0, 2^32 - 1)", op, n);
  GENREC_CHECK(n == 0 || keys != nullptr, "CUDA dynamic table {}: null keys", op);
  if (options_.eviction == EvictionPolicy::kCustom) {
    GENREC_CHECK(n == 0 || scores != nullptr,
                 "CUDA dynamic table {}: the custom eviction policy needs scores", op);
  } else {
    GENREC_CHECK(scores == nullptr,
                 "CUDA dynamic table {}: scores were given but the eviction policy is {}", op,
                 eviction_policy_name(options_.eviction));
  }
}

void CudaDynamicTable::find(const uint64_t* keys, int64_t n, float* values_out, uint8_t* found,
                            cudaStream_t stream, float* states_out, uint64_t* scores_out) const {
  GENREC_CHECK(n >= 0, "CUDA dynamic table find: negative batch size {}", n);
  if (n == 0) return;
  GENREC_CHECK(keys != nullptr, "CUDA dynamic table find: null keys");
  auto lock = begin(stream);
  find_kernel<<<grid_for_keys(n), kThreads, 0, stream>>>(
      storage_->view(), keys, n, values_out, found, state_dim_ > 0 ? states_out : nullptr,
      scores_out, dim(), state_dim_);
  GENREC_CUDA_LAUNCH_CHECK("dynamic table find");
  end(stream);
}

void CudaDynamicTable::contains(const uint64_t* keys, int64_t n, uint8_t* out,
                                cudaStream_t stream) const {
  find(keys, n, nullptr, out, stream);
}

void CudaDynamicTable::run_batch(BatchOp op, const uint64_t* keys, int64_t n,
                                 const float* values_in, float* values_out, uint8_t* flags,
                                 const uint64_t* scores, const EvictedRows* evicted,
                                 cudaStream_t stream) {
  if (n == 0) return;
  auto lock = begin(stream);
  if (batch_ == 0xFFFFFFFFu) {  // marks of old batches would alias new ids
    storage_->clear_marks(stream);
    batch_ = 0;
  }
  BatchArgs a;
  a.keys = keys;
  a.n = n;
  a.values_in = values_in;
  a.values_out = values_out;
  a.flags = flags;
  a.custom = scores;
  if (evicted != nullptr) a.evicted = *evicted;
  a.init = {options_.initializer.kind, options_.initializer.scale, options_.initializer.seed,
            options_.optimizer == OptimizerState::kAdagrad ? options_.initial_state : 0.0f};
  a.dim = dim();
  a.state_dim = state_dim_;
  a.step = step_.load();
  a.epoch = epoch_.load();
  a.batch = ++batch_;
  a.policy = options_.eviction;
  a.op = op;
  DeviceBuffer<int64_t> slots(n, stream);
  a.slots = slots.data();
  const TableView& t = storage_->view();
  const unsigned grid = grid_for_keys(n);
  lookup_kernel<<<grid, kThreads, 0, stream>>>(t, a);
  GENREC_CUDA_LAUNCH_CHECK("dynamic table lookup");
  if (op != BatchOp::kAssign) {
    insert_kernel<<<grid, kThreads, 0, stream>>>(t, a);
    GENREC_CUDA_LAUNCH_CHECK("dynamic table insert");
  }
  if (op != BatchOp::kFindOrInsert || scores != nullptr) {
    if (op == BatchOp::kFindOrInsert) a.values_in = nullptr;
    write_kernel<<<grid, kThreads, 0, stream>>>(t, a);
    GENREC_CUDA_LAUNCH_CHECK("dynamic table write");
  }
  end(stream);
}

void CudaDynamicTable::find_or_insert(const uint64_t* keys, int64_t n, float* values_out,
                                      uint8_t* stored, cudaStream_t stream, const uint64_t* scores,
                                      const EvictedRows* evicted) {
  check_batch(keys, n, scores, "find_or_insert");
  GENREC_CHECK(n == 0 || values_out != nullptr,
               "CUDA dynamic table find_or_insert: null values_out");
  run_batch(BatchOp::kFindOrInsert, keys, n, nullptr, values_out, stored, scores, evicted, stream);
}

void CudaDynamicTable::insert_or_assign(const uint64_t* keys, const float* values, int64_t n,
                                        cudaStream_t stream, uint8_t* stored,
                                        const uint64_t* scores, const EvictedRows* evicted) {
  check_batch(keys, n, scores, "insert_or_assign");
  GENREC_CHECK(n == 0 || values != nullptr, "CUDA dynamic table insert_or_assign: null values");
  run_batch(BatchOp::kInsertOrAssign, keys, n, values, nullptr, stored, scores, evicted, stream);
}

void CudaDynamicTable::assign(const uint64_t* keys, const float* values, int64_t n,
                              cudaStream_t stream, uint8_t* found, const uint64_t* scores) {
  check_batch(keys, n, scores, "assign");
  GENREC_CHECK(n == 0 || values != nullptr, "CUDA dynamic table assign: null values");
  run_batch(BatchOp::kAssign, keys, n, values, nullptr, found, scores, nullptr, stream);
}

void CudaDynamicTable::erase(const uint64_t* keys, int64_t n, cudaStream_t stream,
                             uint8_t* erased) {
  GENREC_CHECK(n >= 0, "CUDA dynamic table erase: negative batch size {}", n);
  if (n == 0) return;
  GENREC_CHECK(keys != nullptr, "CUDA dynamic table erase: null keys");
  auto lock = begin(stream);
  erase_kernel<<<grid_for_keys(n), kThreads, 0, stream>>>(storage_->view(), keys, n, erased);
  GENREC_CUDA_LAUNCH_CHECK("dynamic table erase");
  end(stream);
}

void CudaDynamicTable::launch_export(int64_t offset, int64_t num_slots, uint64_t* keys_out,
                                     float* values_out, int64_t* count, cudaStream_t stream,
                                     float* states_out, uint64_t* scores_out,
                                     uint64_t min_score) const {
  const int64_t end = std::min(offset + num_slots, capacity());
  if (offset >= end) return;
  const unsigned grid = grid_for_keys((end - offset + kTile - 1) / kTile);
  export_kernel<<<grid, kThreads, 0, stream>>>(
      storage_->view(), offset, end, min_score, keys_out, values_out,
      state_dim_ > 0 ? states_out : nullptr, scores_out,
      reinterpret_cast<unsigned long long*>(count), dim(), state_dim_);
  GENREC_CUDA_LAUNCH_CHECK("dynamic table export");
}

void CudaDynamicTable::export_batch(int64_t offset, int64_t num_slots, uint64_t* keys_out,
                                    float* values_out, int64_t* count, cudaStream_t stream,
                                    float* states_out, uint64_t* scores_out,
                                    uint64_t min_score) const {
  GENREC_CHECK(offset >= 0 && num_slots >= 0,
               "CUDA dynamic table export_batch: negative offset {} or slot count {}", offset,
               num_slots);
  GENREC_CHECK(keys_out != nullptr && values_out != nullptr && count != nullptr,
               "CUDA dynamic table export_batch: null output");
  auto lock = begin(stream);
  launch_export(offset, num_slots, keys_out, values_out, count, stream, states_out, scores_out,
                min_score);
  end(stream);
}

TableRows CudaDynamicTable::export_rows(uint64_t min_score, cudaStream_t stream) const {
  const int64_t chunk = std::min<int64_t>(capacity(), int64_t{1} << 20);
  const int64_t d = dim(), sd = state_dim_;
  DeviceBuffer<uint64_t> keys(chunk, stream), scores(chunk, stream);
  DeviceBuffer<float> values(chunk * d, stream), states(chunk * sd, stream);
  DeviceBuffer<int64_t> count(1, stream);
  TableRows rows;
  {
    auto lock = begin(stream);
    for (int64_t offset = 0; offset < capacity(); offset += chunk) {
      GENREC_CUDA_CHECK(cudaMemsetAsync(count.data(), 0, sizeof(int64_t), stream));
      launch_export(offset, chunk, keys.data(), values.data(), count.data(), stream, states.data(),
                    scores.data(), min_score);
      int64_t got = 0;
      GENREC_CUDA_CHECK(
          cudaMemcpyAsync(&got, count.data(), sizeof(got), cudaMemcpyDeviceToHost, stream));
      GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
      if (got == 0) continue;
      const size_t at = rows.keys.size();
      rows.keys.resize(at + got);
      rows.scores.resize(at + got);
      rows.values.resize((at + got) * d);
      rows.states.resize((at + got) * sd);
      auto download = [&](void* dst, const void* src, size_t bytes) {
        if (bytes > 0) {
          GENREC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
        }
      };
      download(rows.keys.data() + at, keys.data(), sizeof(uint64_t) * got);
      download(rows.scores.data() + at, scores.data(), sizeof(uint64_t) * got);
      download(rows.values.data() + at * d, values.data(), sizeof(float) * got * d);
      download(rows.states.data() + at * sd, states.data(), sizeof(float) * got * sd);
      GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
    }
    end(stream);
  }
  // Sorted by key, as DynamicTable::export_rows.
  const int64_t n = rows.size();
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](int64_t x, int64_t y) { return rows.keys[x] < rows.keys[y]; });
  TableRows sorted;
  sorted.keys.resize(n);
  sorted.scores.resize(n);
  sorted.stamps.assign(n, 0);
  sorted.values.resize(n * d);
  sorted.states.resize(n * sd);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t o = order[r];
    sorted.keys[r] = rows.keys[o];
    sorted.scores[r] = rows.scores[o];
    std::copy_n(rows.values.begin() + o * d, d, sorted.values.begin() + r * d);
    std::copy_n(rows.states.begin() + o * sd, sd, sorted.states.begin() + r * sd);
  }
  return sorted;
}

void CudaDynamicTable::reserve(int64_t capacity, cudaStream_t stream) {
  GENREC_CHECK(capacity >= 0, "CUDA dynamic table reserve: negative capacity {}", capacity);
  int64_t buckets = buckets_for(capacity);
  if (buckets <= storage_->num_buckets()) return;
  auto lock = begin(stream);
  const TableView from = storage_->view();
  const int64_t stride = from.stride;
  for (;;) {
    auto next = std::make_unique<TableStorage>(buckets, stride, options_.max_hbm_row_bytes);
    DeviceBuffer<unsigned long long> failures(1, stream);
    GENREC_CUDA_CHECK(cudaMemsetAsync(failures.data(), 0, sizeof(unsigned long long), stream));
    rehash_kernel<<<grid_for_keys(storage_->slots()), kThreads, 0, stream>>>(
        from, next->view(), storage_->slots(), row_dim(), failures.data());
    GENREC_CUDA_LAUNCH_CHECK("dynamic table rehash");
    unsigned long long failed = 0;
    GENREC_CUDA_CHECK(
        cudaMemcpyAsync(&failed, failures.data(), sizeof(failed), cudaMemcpyDeviceToHost, stream));
    GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (failed == 0) {
      storage_ = std::move(next);
      break;
    }
    buckets *= 2;  // a new bucket overflowed: spread the rows over twice as many
  }
  batch_ = 0;  // the new layout's marks are all zero
  end(stream);
}

void CudaDynamicTable::clear(cudaStream_t stream) {
  auto lock = begin(stream);
  storage_->clear(stream);
  end(stream);
}

}  // namespace genrec::cuda

// ---------------------------------------------------------------------------------------------
// insert_rows: whole rows (values, optimizer state, score) inserted or overwritten exactly, as
// the tiers move them. Kept apart from the kernels above: it only reuses their helpers.
// ---------------------------------------------------------------------------------------------

namespace genrec::cuda {
namespace table {
namespace {

struct RowsArgs {
  const uint64_t* keys = nullptr;
  const float* values = nullptr;
  const float* states = nullptr;
  const uint64_t* scores = nullptr;
  int64_t n = 0;
  uint8_t* stored = nullptr;
  EvictedRows evicted;
  int64_t dim = 0, state_dim = 0;
  uint32_t batch = 0;
};

// Marks the slots of the present keys among keys[0, n) and more[0, num_more) as this call's, so
// that no insertion of the call evicts them (scores are not touched).
__global__ void __launch_bounds__(kThreads)
    pin_kernel(TableView t, const uint64_t* keys, int64_t n, const uint64_t* more, int64_t num_more,
               uint32_t batch) {
  for_each_key(n + num_more, [&](const Tile& tile, int64_t i) {
    const uint64_t key = i < n ? keys[i] : more[i - n];
    uint64_t b = 0;
    const int slot = locate<false>(tile, t, key, b);
    if (slot >= 0 && tile.thread_rank() == 0) {
      atomicMax(reinterpret_cast<unsigned long long*>(t.marks + b * kBucketSlots + slot),
                static_cast<unsigned long long>(batch) << 32);
    }
  });
}

// Keys are distinct, so no two tiles write one key; every tile works under its bucket's lock
// (a present key's row is overwritten there too), and the pin kernel has marked every present
// key of the call before the first eviction.
__global__ void __launch_bounds__(kThreads) insert_rows_kernel(TableView t, RowsArgs a) {
  for_each_key(a.n, [&](const Tile& tile, int64_t i) {
    const int lane = static_cast<int>(tile.thread_rank());
    const uint64_t key = a.keys[i];
    bool stored = false;
    if (key != kEmptyKey) {
      const uint64_t h = hash_key(key), b = h & t.bucket_mask, base = b * kBucketSlots;
      const uint32_t digest = digest_of(h);
      const int64_t row_dim = a.dim + a.state_dim;
      lock_bucket(tile, t.locks + b);
      const uint64_t word = lane_digests<true>(tile, t, b);
      int slot = find_in_bucket<true>(tile, t, b, word, key, digest);
      const bool fresh = slot < 0;
      bool evicting = false;
      uint64_t victim_key = 0, victim_score = 0;
      if (fresh) {
        slot = choose_slot(tile, t, base, word, a.batch, &evicting, &victim_key, &victim_score);
      }
      if (slot >= 0) {
        stored = true;
        float* row = row_ptr(t, base + slot);
        if (evicting && a.evicted.count != nullptr) {
          unsigned long long pos = 0;
          if (lane == 0) {
            pos = atomicAdd(reinterpret_cast<unsigned long long*>(a.evicted.count), 1ull);
          }
          pos = tile.shfl(pos, 0);
          if (lane == 0) {
            a.evicted.keys[pos] = victim_key;
            if (a.evicted.scores != nullptr) a.evicted.scores[pos] = victim_score;
          }
          if (a.evicted.rows != nullptr) {
            tile_copy<true>(tile, a.evicted.rows + pos * row_dim, row, row_dim);
          }
          tile.sync();  // the victim's row is read before the new row overwrites it
        }
        tile_copy<false>(tile, row, a.values + i * a.dim, a.dim);
        if (a.state_dim > 0) {
          tile_copy<false>(tile, row + a.dim, a.states + i * a.state_dim, a.state_dim);
        }
        if (lane == 0) {
          store_relaxed(t.scores + base + slot, a.scores[i]);
          if (fresh) {
            store_relaxed(t.marks + base + slot, static_cast<uint64_t>(a.batch) << 32);
            t.digests[base + slot] = static_cast<uint8_t>(digest);
            if (!evicting) atomicAdd(t.size, 1ull);
          }
        }
        if (fresh) {
          __threadfence();  // release: the row before its key, as in insert_kernel
          tile.sync();
          if (lane == 0) store_relaxed(t.keys + base + slot, key);
        }
      }
      unlock_bucket(tile, t.locks + b);
    }
    if (lane == 0 && a.stored != nullptr) a.stored[i] = stored;
  });
}

}  // namespace
}  // namespace table

void CudaDynamicTable::insert_rows(const uint64_t* keys, const float* values, const float* states,
                                   const uint64_t* scores, int64_t n, cudaStream_t stream,
                                   uint8_t* stored, const EvictedRows* evicted,
                                   const uint64_t* pinned, int64_t num_pinned) {
  GENREC_CHECK(n >= 0 && n < int64_t{0xFFFFFFFF},
               "CUDA dynamic table insert_rows: batch size {} outside [0, 2^32 - 1)", n);
  GENREC_CHECK(num_pinned >= 0 && (num_pinned == 0 || pinned != nullptr),
               "CUDA dynamic table insert_rows: {} pinned keys at {}", num_pinned,
               static_cast<const void*>(pinned));
  if (n == 0) return;
  GENREC_CHECK(keys != nullptr && values != nullptr && scores != nullptr &&
                   (state_dim_ == 0 || states != nullptr),
               "CUDA dynamic table insert_rows: null keys, values, scores or states");
  auto lock = begin(stream);
  if (batch_ == 0xFFFFFFFFu) {  // marks of old batches would alias new ids
    storage_->clear_marks(stream);
    batch_ = 0;
  }
  table::RowsArgs a;
  a.keys = keys;
  a.values = values;
  a.states = states;
  a.scores = scores;
  a.n = n;
  a.stored = stored;
  if (evicted != nullptr) a.evicted = *evicted;
  a.dim = dim();
  a.state_dim = state_dim_;
  a.batch = ++batch_;
  const TableView& t = storage_->view();
  table::pin_kernel<<<grid_for_keys(n + num_pinned), kThreads, 0, stream>>>(t, keys, n, pinned,
                                                                            num_pinned, a.batch);
  GENREC_CUDA_LAUNCH_CHECK("dynamic table pin");
  table::insert_rows_kernel<<<grid_for_keys(n), kThreads, 0, stream>>>(t, a);
  GENREC_CUDA_LAUNCH_CHECK("dynamic table insert_rows");
  end(stream);
}

}  // namespace genrec::cuda
