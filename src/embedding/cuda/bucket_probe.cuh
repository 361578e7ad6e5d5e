// Device helpers of the CUDA dynamic table (include from .cu files only). A tile of 16 lanes
// serves one key: lane l owns slots 8l .. 8l+7 of the bucket, so one 8-byte load per lane reads
// all 128 digests (one 128-byte line) and a ballot finds the candidate slots.
//
// Memory ordering: a free slot is claimed by a CAS on its digest (insert kernel) and its key
// published last with a release store; full buckets change under their bucket's lock (evicting
// inserts, insert_rows, rehash); erase frees a slot by a CAS on its key. Loads marked "racing" are
// relaxed device-scope atomics (served by L2, so never stale L1 lines) and row loads in racing
// kernels bypass L1 (__ldcg). Lane 0 of a tile takes the lock (relaxed CAS, then an acquire fence)
// and releases it (a release store) with a tile barrier on the other side, which orders memory
// among the lanes: so everything a holder's lanes wrote is visible to the next holder.
// Acquire/release fences (fence.acq_rel) instead of
// __threadfence (fence.sc) cost less on the insert path, which fences three times per key.
#pragma once

#include "core/cuda/cuda_check.h"  // first: it configures fmt for nvcc

#include <cooperative_groups.h>
#include <cuda/atomic>

#include <cstdint>

#include "core/hash.h"
#include "core/philox.h"
#include "embedding/cuda/table_storage.h"
#include "embedding/dynamic_table.h"
#include "embedding/eviction.h"

namespace genrec::cuda::table {

namespace cg = cooperative_groups;

constexpr int kTile = 16;  // lanes per key
constexpr int kSlotsPerLane = kBucketSlots / kTile;
constexpr int kThreads = 256;
constexpr int kTilesPerBlock = kThreads / kTile;
using Tile = cg::thread_block_tile<kTile, cg::thread_block>;

// A key's hash is mix64(key) (core/hash.h): the bucket takes the low bits, the digest the top
// byte, so the two stay independent for any bucket count up to 2^56. Digest 0 marks a free slot
// (keys with a top byte of 0 get digest 1), so free slots are found from the digests alone and
// never match a probe.
__device__ __forceinline__ uint32_t digest_of(uint64_t hash) {
  const uint32_t d = static_cast<uint32_t>(hash >> 56);
  return d == 0 ? 1 : d;
}

template <typename T>
__device__ __forceinline__ T load_relaxed(const T* p) {
  return ::cuda::atomic_ref<T, ::cuda::thread_scope_device>(*const_cast<T*>(p))
      .load(::cuda::memory_order_relaxed);
}
template <typename T>
__device__ __forceinline__ void store_relaxed(T* p, T v) {
  ::cuda::atomic_ref<T, ::cuda::thread_scope_device>(*p).store(v, ::cuda::memory_order_relaxed);
}
template <bool kRacing, typename T>
__device__ __forceinline__ T load(const T* p) {
  if constexpr (kRacing) {
    return load_relaxed(p);
  } else {
    return *p;
  }
}

// Runs f(tile, i) for i in [0, n), one tile per key, grid-stride.
template <typename F>
__device__ __forceinline__ void for_each_key(int64_t n, F&& f) {
  const Tile tile = cg::tiled_partition<kTile>(cg::this_thread_block());
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kTilesPerBlock;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kTilesPerBlock + tile.meta_group_rank();
       i < n; i += stride) {
    f(tile, i);
  }
}

// Runs f(tile, i) for the i in [0, n) with flags[i] == value, one tile per key: each block reads
// kThreads flags at once and hands the matching keys to its tiles, so a kernel for the few keys an
// earlier one left does not wait on one flag load after another.
template <typename F>
__device__ __forceinline__ void for_each_flagged_key(const uint8_t* flags, uint8_t value, int64_t n,
                                                     F&& f) {
  __shared__ int64_t picked[kThreads];
  __shared__ int count;
  const Tile tile = cg::tiled_partition<kTile>(cg::this_thread_block());
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads; first < n; first += stride) {
    if (threadIdx.x == 0) count = 0;
    __syncthreads();
    const int64_t i = first + threadIdx.x;
    if (i < n && flags[i] == value) picked[atomicAdd(&count, 1)] = i;
    __syncthreads();
    for (int k = static_cast<int>(tile.meta_group_rank()); k < count; k += kTilesPerBlock) {
      f(tile, picked[k]);
    }
    __syncthreads();
  }
}

// The 8 digests of this lane's slots in bucket b (byte j: slot 8 * lane + j).
template <bool kRacing>
__device__ __forceinline__ uint64_t lane_digests(const Tile& tile, const TableView& t, uint64_t b) {
  return load<kRacing>(reinterpret_cast<const uint64_t*>(t.digests + b * kBucketSlots) +
                       tile.thread_rank());
}

// Bit j set where byte j of a lane's digest word equals d (0 finds the free slots).
__device__ __forceinline__ uint32_t digest_matches(uint64_t word, uint32_t d) {
  const uint32_t d4 = d * 0x01010101u;
  const uint32_t lo = __vcmpeq4(static_cast<uint32_t>(word), d4) & 0x01010101u;
  const uint32_t hi = __vcmpeq4(static_cast<uint32_t>(word >> 32), d4) & 0x01010101u;
  // The multiply gathers the low bits of the 4 bytes into bits 24..27, without carries.
  return ((lo * 0x01020408u) >> 24) | ((hi * 0x01020408u) >> 20);
}

// find_in_bucket's answer when no slot holds the key but a candidate slot is claimed and its
// key not yet published (only while the insert kernel runs, see there): the caller probes again.
constexpr int kUnpublished = -2;

// The slot (0..127) of `key` in bucket b given the lanes' digests, else kUnpublished (racing
// probes only) or -1; every lane gets the answer. Relies on a key occupying at most one slot. A
// lane reads its candidates' keys one at a time: it rarely has two (8 / 255 false candidates per
// full lane), and no predicated load per slot keeps the kernels' registers, so their occupancy,
// down (find fits in 32).
template <bool kRacing>
__device__ __forceinline__ int find_in_bucket(const Tile& tile, const TableView& t, uint64_t b,
                                              uint64_t word, uint64_t key, uint32_t digest) {
  const uint64_t base = b * kBucketSlots;
  const int lane = static_cast<int>(tile.thread_rank());
  int found = -1;
  bool unpublished = false;
  for (uint32_t m = digest_matches(word, digest); m != 0; m &= m - 1) {
    const int s = lane * kSlotsPerLane + __ffs(m) - 1;
    const uint64_t k = load<kRacing>(&t.slots[base + s].key);
    if (k == key) {
      found = s;
      break;
    }
    unpublished |= kRacing && k == kEmptyKey;
  }
  const unsigned hit = tile.ballot(found >= 0);
  if (hit != 0) return tile.shfl(found, __ffs(hit) - 1);
  return kRacing && tile.any(unpublished) ? kUnpublished : -1;
}

template <bool kRacing>
__device__ __forceinline__ int probe(const Tile& tile, const TableView& t, uint64_t b, uint64_t key,
                                     uint32_t digest) {
  return find_in_bucket<kRacing>(tile, t, b, lane_digests<kRacing>(tile, t, b), key, digest);
}

// The mark occurrence i of batch `batch` leaves on a slot it accesses (see the batch marks in
// cuda_dynamic_table.cu): the high half protects the row for the call, the low half names the
// occurrence.
__device__ __forceinline__ uint64_t mark_of(uint32_t batch, int64_t i) {
  return (static_cast<uint64_t>(batch) << 32) | static_cast<uint64_t>(i + 1);
}

// The slot of `key` within its bucket (`bucket` is set), or < 0 when it is absent (see
// find_in_bucket); the reserved empty key is never present.
template <bool kRacing>
__device__ __forceinline__ int locate(const Tile& tile, const TableView& t, uint64_t key,
                                      uint64_t& bucket) {
  bucket = 0;
  if (key == kEmptyKey) return -1;
  const uint64_t h = mix64(key);
  bucket = h & t.bucket_mask;
  return probe<kRacing>(tile, t, bucket, key, digest_of(h));
}

// Slot j of bucket b: device row b * hbm_per_bucket + j, or host row (j - hbm_per_bucket) *
// buckets + b (see TableStorage).
__device__ __forceinline__ float* row_ptr(const TableView& t, uint64_t slot) {
  const int64_t s = static_cast<int64_t>(slot), b = s / kBucketSlots, j = s % kBucketSlots;
  const int64_t h = t.hbm_per_bucket;
  return j < h ? t.hbm_rows + (b * h + j) * t.stride
               : t.host_rows + ((j - h) * static_cast<int64_t>(t.bucket_mask + 1) + b) * t.stride;
}

// The host row of slot s (an index into host_rows), or kNoHostRow when its row is in device
// memory; slot_of_host_row inverts it.
__device__ __forceinline__ uint64_t host_row_of(const TableView& t, uint64_t slot) {
  const uint64_t b = slot / kBucketSlots, j = slot % kBucketSlots;
  const uint64_t h = static_cast<uint64_t>(t.hbm_per_bucket);
  return j < h ? kNoHostRow : (j - h) * (t.bucket_mask + 1) + b;
}
__device__ __forceinline__ uint64_t slot_of_host_row(const TableView& t, uint64_t row) {
  const uint64_t h = static_cast<uint64_t>(t.hbm_per_bucket);
  return (row & t.bucket_mask) * kBucketSlots + h + row / (t.bucket_mask + 1);
}

// Notes occurrence i's host row for copy_host_rows (kNoHostRow: none); lane 0 writes.
__device__ __forceinline__ void queue_host_row(const Tile& tile, const HostRowQueue& q, int64_t i,
                                               uint64_t row) {
  if (tile.thread_rank() == 0) {
    q.rows[i] = row;
    q.occurrences[i] = static_cast<uint32_t>(i);
  }
}

// dst[0, n) = src[0, n) by the tile, in float4 when both are 16-byte aligned and n % 4 == 0.
// kRacing: src is a row another tile of this kernel may have written (read through L2).
template <bool kRacing>
__device__ __forceinline__ void tile_copy(const Tile& tile, float* dst, const float* src,
                                          int64_t n) {
  const int lane = static_cast<int>(tile.thread_rank());
  const bool vec =
      (n & 3) == 0 &&
      ((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) & 15) == 0;
  if (vec) {
    const float4* s4 = reinterpret_cast<const float4*>(src);
    float4* d4 = reinterpret_cast<float4*>(dst);
    for (int64_t k = lane; k < n / 4; k += kTile) d4[k] = kRacing ? __ldcg(s4 + k) : s4[k];
  } else {
    for (int64_t k = lane; k < n; k += kTile) dst[k] = kRacing ? __ldcg(src + k) : src[k];
  }
}

// The initial row of a key: the CPU Initializer::fill element for element (uniform rows are
// bit-identical; normal rows may differ in the last bits of logf/cosf), then the state.
struct InitParams {
  InitKind kind = InitKind::kZeros;
  float scale = 0.0f;
  uint64_t seed = 0;
  float state0 = 0.0f;
};

__device__ __forceinline__ float init_value(const InitParams& p, uint64_t key, int64_t j) {
  switch (p.kind) {
    case InitKind::kUniform:
      return p.scale * (2.0f * philox_uniform(p.seed, key, static_cast<uint64_t>(j)) - 1.0f);
    case InitKind::kNormal: {
      const float u1 = philox_uniform(p.seed, key, 2 * static_cast<uint64_t>(j));
      const float u2 = philox_uniform(p.seed, key, 2 * static_cast<uint64_t>(j) + 1);
      const float r = sqrtf(-2.0f * logf(1.0f - u1));
      return p.scale * r * cosf(6.2831853071795864f * u2);
    }
    case InitKind::kZeros:
      break;
  }
  return 0.0f;
}

// values: dim floats of the initializer; state (may be null): state_dim floats of state0.
__device__ __forceinline__ void tile_init_row(const Tile& tile, const InitParams& p, uint64_t key,
                                              float* values, int64_t dim, float* state,
                                              int64_t state_dim) {
  for (int64_t j = tile.thread_rank(); j < dim; j += kTile) values[j] = init_value(p, key, j);
  if (state != nullptr) {
    for (int64_t j = tile.thread_rank(); j < state_dim; j += kTile) state[j] = p.state0;
  }
}

// The score after one access: score_after_access of eviction.cpp on a shared word. Custom
// scores are written elsewhere (by the last occurrence of the key).
__device__ __forceinline__ void touch_score(uint64_t* p, EvictionPolicy policy, bool is_new,
                                            uint64_t step, uint64_t epoch) {
  constexpr uint64_t kLow32 = 0xFFFFFFFFull;
  auto* word = reinterpret_cast<unsigned long long*>(p);
  switch (policy) {
    case EvictionPolicy::kLru:
      store_relaxed(p, step);
      break;
    case EvictionPolicy::kLfu:
      // Wraps only after 2^64 accesses (the CPU table saturates there).
      if (is_new) {
        store_relaxed(p, uint64_t{1});
      } else {
        atomicAdd(word, 1ull);
      }
      break;
    case EvictionPolicy::kEpochLru:
      store_relaxed(p, (epoch << 32) | (step & kLow32));
      break;
    case EvictionPolicy::kEpochLfu:
      if (is_new) {
        store_relaxed(p, (epoch << 32) | 1);
      } else {
        unsigned long long old = load_relaxed(word), seen;
        do {
          seen = old;
          const uint64_t count = (seen & kLow32) == kLow32 ? kLow32 : (seen & kLow32) + 1;
          old = atomicCAS(word, seen, (epoch << 32) | count);
        } while (old != seen);
      }
      break;
    case EvictionPolicy::kCustom:
      break;
  }
}

__device__ __forceinline__ void acquire_fence() {
  ::cuda::atomic_thread_fence(::cuda::memory_order_acquire, ::cuda::thread_scope_device);
}

__device__ __forceinline__ void lock_bucket(const Tile& tile, uint32_t* lock) {
  if (tile.thread_rank() == 0) {
    // Backing off keeps the waiters' CAS traffic off the L2 slice the holder needs.
    for (unsigned ns = 32; atomicCAS(lock, 0u, 1u) != 0u; ns = min(2 * ns, 512u)) __nanosleep(ns);
    acquire_fence();
  }
  tile.sync();
}

__device__ __forceinline__ void unlock_bucket(const Tile& tile, uint32_t* lock) {
  tile.sync();
  if (tile.thread_rank() == 0) {
    ::cuda::atomic_ref<uint32_t, ::cuda::thread_scope_device>(*lock).store(
        0u, ::cuda::memory_order_release);
  }
}

// Stores a new slot's key after everything the tile wrote for it (row, mark, score, digest):
// a lock-free probe that reads the key and then fences (acquire_fence) sees the whole row.
__device__ __forceinline__ void publish_key(const Tile& tile, uint64_t* slot_key, uint64_t key) {
  tile.sync();
  if (tile.thread_rank() == 0) {
    ::cuda::atomic_ref<uint64_t, ::cuda::thread_scope_device>(*slot_key).store(
        key, ::cuda::memory_order_release);
  }
}

}  // namespace genrec::cuda::table
