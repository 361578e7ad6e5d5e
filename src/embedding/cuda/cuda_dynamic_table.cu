// Inserting and assigning calls run a lookup kernel, then an insert kernel (inserting calls) and
// a rewrite kernel (calls that write values or custom scores), so that duplicates and eviction
// have defined results without sorting the batch:
// 1. lookup (lock-free, no slot changes): present keys get their slot, mark it as this batch's
//    (atomicMax of batch << 32 | (i + 1): the high half protects the row from eviction for the
//    rest of the call, the low half ends up naming the key's last occurrence), update scores,
//    write their values, stamps and custom scores (see mark_and_write), and find_or_insert
//    copies their rows out. Absent keys are left pending.
// 2. insert (pending keys only): probe again (a duplicate may have inserted the key meanwhile),
//    else claim the bucket's lowest free slot (with host rows: free device slot) without a lock
//    (a CAS on its digest), else under the bucket lock take a free slot or evict the unmarked
//    slot with the lowest (score, key), and when that slot's row is in host memory, move the
//    lowest-scored unmarked device row there and take its device slot; the new row is written,
//    stamped and marked before its key is published, and duplicates that find it mark and
//    write like the lookup (see the kernels).
// 3. rewrite: the few rows that several occurrences may have written get the values (and
//    custom score) of the occurrence their mark names, the last one, as on the CPU.
// Because every present key of the batch is marked before any eviction can happen, no row of
// the batch's keys is ever evicted by the call.
// Removals are logged where a row goes (the evict kernel, insert_rows, erase, clear), never in
// the lookup, find or insert kernels: a table that logs costs them nothing.
#include "core/cuda/cuda_check.h"  // first: it configures fmt for nvcc

#include "embedding/cuda/cuda_dynamic_table.h"

#include <algorithm>
#include <bit>
#include <numeric>
#include <optional>

#include "core/cuda/caching_allocator.h"
#include "embedding/cuda/bucket_probe.cuh"
#include "embedding/cuda/host_row_copies.h"
#include "embedding/cuda/table_admission.cuh"
#include "embedding/cuda/table_storage.h"

namespace genrec::cuda {

enum class BatchOp : uint8_t { kFindOrInsert, kInsertOrAssign, kAssign };

namespace table {
namespace {

constexpr uint64_t kLow32 = 0xFFFFFFFFull;

struct BatchArgs {
  const uint64_t* keys = nullptr;
  int64_t n = 0;
  const float* values_in = nullptr;  // insert_or_assign, assign
  float* values_out = nullptr;       // find_or_insert
  uint8_t* flags = nullptr;          // stored (find_or_insert, insert_or_assign) or found (assign)
  const uint64_t* custom = nullptr;
  uint8_t* pending = nullptr;   // inserting calls, per key: absent at lookup, to be inserted
  int64_t* rewrites = nullptr;  // room for n (slot, occurrence) pairs, see mark_and_write
  HostRowQueue host_queue;      // lookup_kernel<., true>: host-row copies left to copy_host_rows
  float* demoted = nullptr;     // n x (dim + state_dim): rows demote_device_row moves to host
  EvictedRows evicted;
  RemovalSink removals;  // the evict kernel logs its victims here
  InitParams init;
  int64_t dim = 0, state_dim = 0;
  uint64_t step = 0, epoch = 0;
  uint32_t batch = 0;
  EvictionPolicy policy = EvictionPolicy::kLru;
  BatchOp op = BatchOp::kFindOrInsert;
};

// Appends a removed key to the table's removal log; one thread per removal, nothing without a log.
// The call made room for every row it may remove (DeviceRemovalLog::make_room).
__device__ __forceinline__ void log_removal(const RemovalSink& log, uint64_t key, uint64_t step) {
  if (log.count == nullptr) return;
  const unsigned long long at = atomicAdd(log.count, 1ull);
  log.keys[at] = key;
  log.steps[at] = step;
}

// Size changes summed per block, then one atomic per block: per-key atomics on the one size
// word serialize in L2.
__device__ __forceinline__ void begin_block_count(unsigned long long& count) {
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
}
__device__ __forceinline__ void end_block_count(unsigned long long& count,
                                                unsigned long long* total) {
  __syncthreads();
  if (threadIdx.x == 0 && count != 0) atomicAdd(total, count);
}

// At most 32 registers, so 8 blocks (128 keys in flight) per SM: the kernel waits on 4 dependent
// loads per key (key, digests, candidate keys, row), so its throughput follows the keys in flight.
// kQueue: host rows are noted in q for copy_host_rows instead of copied.
template <bool kQueue>
__global__ void __launch_bounds__(kThreads, 2048 / kThreads)
    find_kernel(TableView t, const uint64_t* keys, int64_t n, float* values, uint8_t* found,
                float* states, uint64_t* scores, uint64_t* stamps, int64_t dim, int64_t state_dim,
                HostRowQueue q) {
  for_each_key(n, [&](const Tile& tile, int64_t i) {
    const uint64_t key = keys[i];
    uint64_t b = 0;
    const int slot = locate<false>(tile, t, key, b);
    if (tile.thread_rank() == 0 && found != nullptr) found[i] = slot >= 0;
    const uint64_t s = b * kBucketSlots + slot;
    if (slot >= 0 && scores != nullptr && tile.thread_rank() == 0) scores[i] = t.slots[s].score;
    if (slot >= 0 && stamps != nullptr && tile.thread_rank() == 0) stamps[i] = t.slots[s].stamp;
    if constexpr (kQueue) {
      const uint64_t r = slot >= 0 && values != nullptr ? host_row_of(t, s) : kNoHostRow;
      queue_host_row(tile, q, i, r);
      if (r != kNoHostRow) return;
    }
    if (slot < 0) return;
    const float* row = row_ptr(t, s);
    if (values != nullptr) tile_copy<false>(tile, values + i * dim, row, dim);
    if (states != nullptr) tile_copy<false>(tile, states + i * state_dim, row + dim, state_dim);
  });
}

// Occurrence i accesses the row in slot s: the mark becomes max(mark, mark_of(batch, i)), the
// score is touched, and a writing call writes occurrence i's values and custom score unless the
// old mark names a later occurrence (which writes instead). Two writers of a row race only if
// the second to mark saw the first's mark, an old mark of this call: such a writer queues (s, i)
// for the rewrite kernel, which rewrites the row from the occurrence the final mark names. So
// the last occurrence either marks first and is the row's only writer, or queues itself and
// writes after every other writer: its values win without ordering within the kernel.
// kWrites: the call writes values or custom scores. kHold: rows of up to 4 * kTile floats
// (float4-aligned) are loaded into the lanes while the atomic is in flight, so the write does not
// wait for a load after it (4 more registers: the insert kernel, where found keys are rare
// duplicates, copies after the atomic instead).
// queued: the row's write is left to copy_host_rows (a host row).
template <bool kWrites, bool kHold>
__device__ __forceinline__ void mark_and_write(const Tile& tile, const TableView& t,
                                               const BatchArgs& a, int64_t i, uint64_t s,
                                               bool queued = false) {
  const int lane = static_cast<int>(tile.thread_rank());
  const uint64_t mine = mark_of(a.batch, i);
  auto* mark = reinterpret_cast<unsigned long long*>(&t.slots[s].mark);
  if constexpr (!kWrites) {
    if (lane == 0) {
      atomicMax(mark, mine);
      touch_score(&t.slots[s].score, a.policy, false, a.step, a.epoch);
    }
    return;
  }
  const float* src = a.values_in != nullptr && !queued ? a.values_in + i * a.dim : nullptr;
  const bool held = kHold && src != nullptr && a.dim <= 4 * kTile && (a.dim & 3) == 0 &&
                    (reinterpret_cast<uintptr_t>(src) & 15) == 0;
  float4 v = {};
  if (held && lane < a.dim / 4) v = reinterpret_cast<const float4*>(src)[lane];
  unsigned long long old = 0;
  uint64_t custom = 0;
  if (lane == 0) {
    if (a.custom != nullptr) custom = a.custom[i];
    old = atomicMax(mark, mine);
    touch_score(&t.slots[s].score, a.policy, false, a.step, a.epoch);
  }
  old = tile.shfl(old, 0);
  if (old > mine) return;
  if (held) {
    if (lane < a.dim / 4) reinterpret_cast<float4*>(row_ptr(t, s))[lane] = v;  // 16-byte rows
  } else if (src != nullptr) {
    tile_copy<false>(tile, row_ptr(t, s), src, a.dim);
  }
  if (lane == 0) {
    if (a.custom != nullptr) store_relaxed(&t.slots[s].score, custom);
    if ((old >> 32) == a.batch) {
      const unsigned long long at = atomicAdd(t.rewrites, 1ull);
      a.rewrites[2 * at] = static_cast<int64_t>(s);
      a.rewrites[2 * at + 1] = i;
    }
  }
}

// Templated on whether the call writes, so that find_or_insert's lookup keeps its registers low.
// Capped at 32 registers like find_kernel (8 blocks per SM instead of 6: more keys in flight).
// kQueue: the copies of present keys' host rows (find_or_insert's reads, the writes of assign
// and insert_or_assign) are noted in a.host_queue for copy_host_rows.
template <bool kWrites, bool kQueue>
__global__ void __launch_bounds__(kThreads, 2048 / kThreads)
    lookup_kernel(TableView t, BatchArgs a) {
  for_each_key(a.n, [&](const Tile& tile, int64_t i) {
    const uint64_t key = a.keys[i];
    const bool lead = tile.thread_rank() == 0;
    const bool inserting = a.op != BatchOp::kAssign;
    uint64_t b = 0;
    const int slot = locate<false>(tile, t, key, b);
    const uint64_t s = b * kBucketSlots + slot;
    const uint64_t host_row = kQueue && slot >= 0 ? host_row_of(t, s) : kNoHostRow;
    if constexpr (kQueue) queue_host_row(tile, a.host_queue, i, host_row);
    if (slot < 0) {
      const bool pending = inserting && key != kEmptyKey;
      if (lead) {
        if (inserting) a.pending[i] = pending;
        if (!pending && a.flags != nullptr) a.flags[i] = 0;
      }
      if (key == kEmptyKey && a.op == BatchOp::kFindOrInsert) {
        tile_init_row(tile, a.init, key, a.values_out + i * a.dim, a.dim, nullptr, 0);
      }
      return;
    }
    if (lead) {
      if (inserting) a.pending[i] = 0;
      if (a.flags != nullptr) a.flags[i] = 1;
      // A call that writes values stamps the row. Every occurrence may: they all store this
      // call's step. The stamps are in device memory, so host rows are stamped here too.
      if (kWrites && a.values_in != nullptr) store_relaxed(&t.slots[s].stamp, a.step);
    }
    const bool queued = host_row != kNoHostRow;
    mark_and_write<kWrites, true>(tile, t, a, i, s, queued);
    if (a.op == BatchOp::kFindOrInsert && !queued) {
      tile_copy<false>(tile, a.values_out + i * a.dim, row_ptr(t, s), a.dim);
    }
  });
}

// Appends an evicting insert's victim (key, score, row, stamp) to `ev`, when the call asked for
// them, before the new row overwrites it. The whole tile calls it, under the bucket lock.
__device__ __forceinline__ void write_out_victim(const Tile& tile, const EvictedRows& ev,
                                                 const float* row, int64_t row_dim, uint64_t key,
                                                 uint64_t score, const uint64_t* stamp) {
  if (ev.count == nullptr) return;
  unsigned long long pos = 0;
  if (tile.thread_rank() == 0) {
    pos = atomicAdd(reinterpret_cast<unsigned long long*>(ev.count), 1ull);
  }
  pos = tile.shfl(pos, 0);
  if (tile.thread_rank() == 0) {
    ev.keys[pos] = key;
    if (ev.scores != nullptr) ev.scores[pos] = score;
    if (ev.stamps != nullptr) ev.stamps[pos] = load_relaxed(stamp);
  }
  if (ev.rows != nullptr) tile_copy<true>(tile, ev.rows + pos * row_dim, row, row_dim);
  tile.sync();  // the victim's row is read before the new row overwrites it
}

// A lane's bits (bit j: slot kSlotsPerLane * lane + j) of the slots in [lo, hi).
__device__ __forceinline__ uint32_t lane_slots_in(int lane, int lo, int hi) {
  const int first = lane * kSlotsPerLane;
  const int from = min(max(lo - first, 0), kSlotsPerLane),
            to = min(max(hi - first, 0), kSlotsPerLane);
  return ((1u << to) - 1) & ~((1u << from) - 1);
}

// The lowest slot of a bucket whose lane bit is set in `free_mask` (each lane its own bits), or
// -1 when there is none.
__device__ __forceinline__ int lowest_set_slot(const Tile& tile, uint32_t free_mask) {
  const unsigned frees = tile.ballot(free_mask != 0);
  if (frees == 0) return -1;
  const int lane = __ffs(frees) - 1;
  return lane * kSlotsPerLane + __ffs(tile.shfl(free_mask, lane)) - 1;
}

// The lowest free slot of a bucket given the lanes' digests `word`, or -1 when it is full.
__device__ __forceinline__ int lowest_free_slot(const Tile& tile, uint64_t word) {
  return lowest_set_slot(tile, digest_matches(word, 0));
}

// The lowest free slot in [lo, hi), or -1 when there is none.
__device__ __forceinline__ int lowest_free_slot_in(const Tile& tile, uint64_t word, int lo,
                                                   int hi) {
  return lowest_set_slot(
      tile, digest_matches(word, 0) & lane_slots_in(static_cast<int>(tile.thread_rank()), lo, hi));
}

// The mark of a row the evict kernel moved from a device slot to a host slot in this call
// (batch << 32 | kDemotedMark | occurrence that moved it): its row is still staged in
// BatchArgs::demoted until copy_host_rows writes it, and it may be evicted like any row outside
// the batch. Batches have fewer than 2^31 keys, so no occurrence mark has the bit.
constexpr uint64_t kDemotedMark = 1ull << 31;

__device__ __forceinline__ uint64_t demoted_mark(uint32_t batch, int64_t i) {
  return (static_cast<uint64_t>(batch) << 32) | kDemotedMark | static_cast<uint64_t>(i);
}
__device__ __forceinline__ bool demoted_in(uint64_t mark, uint32_t batch) {
  return (mark >> 32) == batch && (mark & kDemotedMark) != 0;
}
// The occurrence that moved a row with a demoted mark.
__device__ __forceinline__ int64_t demoted_by(uint64_t mark) {
  return static_cast<int64_t>(mark & (kDemotedMark - 1));
}

// The slot in [lo, hi) of bucket `base` to evict (or demote): the one outside the batch (its mark
// is not this batch's, or it was demoted in this call) with the lowest (score, key), or -1 when
// there is none. Called under the bucket lock. Slots claimed but not yet published (key still
// kEmptyKey) belong to this batch: the key is read with acquire so that a published key's mark is
// seen with it (the claimer marks before publishing).
__device__ __forceinline__ int choose_victim(const Tile& tile, const TableView& t, uint64_t base,
                                             uint32_t batch, uint64_t* victim_key,
                                             uint64_t* victim_score, int lo = 0,
                                             int hi = kBucketSlots) {
  const int lane = static_cast<int>(tile.thread_rank());
  const uint32_t in_range = lane_slots_in(lane, lo, hi);
  int best = -1;
  uint64_t best_score = 0, best_key = 0;
  for (int j = 0; j < kSlotsPerLane; ++j) {
    if ((in_range >> j & 1) == 0) continue;
    const Slot& slot = t.slots[base + lane * kSlotsPerLane + j];
    const uint64_t k =
        ::cuda::atomic_ref<uint64_t, ::cuda::thread_scope_device>(const_cast<uint64_t&>(slot.key))
            .load(::cuda::memory_order_acquire);
    if (k == kEmptyKey) continue;
    const uint64_t mark = load_relaxed(&slot.mark);
    if ((mark >> 32) == batch && (mark & kDemotedMark) == 0) continue;
    const uint64_t sc = load_relaxed(&slot.score);
    if (best < 0 || sc < best_score || (sc == best_score && k < best_key)) {
      best = lane * kSlotsPerLane + j;
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
  *victim_key = best_key;
  *victim_score = best_score;
  return best;
}

// Claims free slot `slot` of bucket `base` for a key with digest `digest`: a CAS of the 32-bit
// digest word that holds it, from the lanes' snapshot `word` (the owning lane's 8 digests). Fails
// when anything in that word changed since the snapshot; every lane gets the answer.
__device__ __forceinline__ bool claim_slot(const Tile& tile, const TableView& t, uint64_t base,
                                           uint64_t word, int slot, uint32_t digest) {
  bool claimed = false;
  if (static_cast<int>(tile.thread_rank()) == slot / kSlotsPerLane) {
    const int byte = slot % kSlotsPerLane;
    const uint32_t seen = static_cast<uint32_t>(word >> (byte & 4) * 8);
    auto* half = reinterpret_cast<unsigned int*>(t.digests + base + slot - byte % 4);
    claimed = atomicCAS(half, seen, seen | digest << (byte % 4) * 8) == seen;
  }
  return tile.any(claimed);
}

// Writes a new key's row (the initializer's values or occurrence i's, initial state), mark,
// score and stamp into slot s, then publishes the key (publish_key). The whole tile calls it.
// row_later: the row is left to copy_host_rows (a host row noted with kNewHostRow).
__device__ __forceinline__ void write_new_row(const Tile& tile, const TableView& t,
                                              const BatchArgs& a, int64_t i, uint64_t key,
                                              uint64_t s, bool row_later = false) {
  if (!row_later) {
    float* row = row_ptr(t, s);
    tile_init_row(tile, a.init, key, row, a.values_in == nullptr ? a.dim : 0, row + a.dim,
                  a.state_dim);
    if (a.values_in != nullptr) tile_copy<false>(tile, row, a.values_in + i * a.dim, a.dim);
  }
  if (tile.thread_rank() == 0) {
    Slot& slot = t.slots[s];
    // The mark names this occurrence, so later ones rewrite the row.
    store_relaxed(&slot.mark, mark_of(a.batch, i));
    if (a.policy == EvictionPolicy::kCustom) {
      store_relaxed(&slot.score, a.custom[i]);
    } else {
      touch_score(&slot.score, a.policy, true, a.step, a.epoch);
    }
    slot.stamp = a.step;  // duplicates that find this row later in the call need not stamp it
  }
  publish_key(tile, &t.slots[s].key, key);
}

// a.pending[i] after the insert kernel when key i's bucket was full: the evict kernel inserts it.
constexpr uint8_t kBucketFull = 2;

// What every inserting occurrence does last, with s the key's slot (-1: not stored): a row found
// rather than inserted (an earlier duplicate's) is marked and written like the lookup does, the
// stored flag is set, and find_or_insert copies the row out (or the initial values when the key
// could not be stored). The row cannot change slots for the rest of the call: it carries this
// batch's mark. kHostRows: the table may have host rows (else every row is in device memory).
template <bool kHostRows>
__device__ __forceinline__ void finish_insert(const Tile& tile, const TableView& t,
                                              const BatchArgs& a, int64_t i, uint64_t key,
                                              int64_t s, bool inserted) {
  if (s >= 0 && !inserted) {  // published with its key: fence after reading it
    acquire_fence();
    tile.sync();
    if (a.values_in != nullptr || a.custom != nullptr) {
      mark_and_write<true, false>(tile, t, a, i, s);
    } else {
      mark_and_write<false, false>(tile, t, a, i, s);
    }
  }
  if (tile.thread_rank() == 0 && a.flags != nullptr) a.flags[i] = s >= 0;
  if (a.op == BatchOp::kFindOrInsert) {
    // A row found here was inserted by this call, so it holds the initial values: a host row's
    // are computed again rather than read across PCIe (and may not be written yet, row_later).
    float* out = a.values_out + i * a.dim;
    if (s >= 0 && (!kHostRows || host_row_of(t, static_cast<uint64_t>(s)) == kNoHostRow)) {
      tile_copy<true>(tile, out, row_ptr(t, s), a.dim);
    } else {
      tile_init_row(tile, a.init, key, out, a.dim, nullptr, 0);
    }
  }
}

// Inserts the pending keys whose bucket has a free slot, without a lock: a tile claims the
// bucket's lowest free slot by a CAS on its digest (claim_slot), writes the row, mark and score,
// and only then publishes the key with a release store (publish_key). Two occurrences of one new
// key cannot both insert it: each claims the lowest free slot it sees and slots only fill during
// the kernel, so the later claimer's snapshot either already shows the earlier one's digest (it
// probes, waits for the key and finds it) or names the same slot (its CAS fails and it probes
// again). A probe that sees a key and then fences (acquire) sees the whole row, so duplicates of
// a key inserted earlier in the call find it without waiting. Keys whose bucket is full are left
// to the evict kernel, which runs after this one.
// Capped at 32 registers: the kernel is bound by latency, not bandwidth, so keys in flight count.
// kHostRows: the table has host rows (a.host_queue is set); the kernel of a table without them
// carries none of their code (with it, its inserting calls ran 7-13% slower on an H100).
template <bool kHostRows>
__global__ void __launch_bounds__(kThreads, 2048 / kThreads)
    insert_kernel(TableView t, BatchArgs a) {
  __shared__ unsigned long long added;
  begin_block_count(added);
  // With device and host rows, new keys take device slots only (see evict_kernel).
  const int new_key_slots = t.splits_rows() ? static_cast<int>(t.hbm_per_bucket) : kBucketSlots;
  for_each_key(a.n, [&](const Tile& tile, int64_t i) {
    if (a.pending[i] == 0) return;
    const uint64_t key = a.keys[i];
    const uint64_t h = mix64(key), b = h & t.bucket_mask, base = b * kBucketSlots;
    const uint32_t digest = digest_of(h);
    int slot = -1;
    bool claimed = false;
    for (unsigned pause = 0; !claimed; pause = min(2 * pause + 32, 512u)) {
      if (pause > 0) __nanosleep(pause);  // a claimed key about to be published, or a lost claim
      const uint64_t word = lane_digests<true>(tile, t, b);
      slot = find_in_bucket<true>(tile, t, b, word, key, digest);
      if (slot == kUnpublished) continue;
      if (slot >= 0) break;
      slot = kHostRows ? lowest_free_slot_in(tile, word, 0, new_key_slots)
                       : lowest_free_slot(tile, word);
      if (slot < 0) {
        if (tile.thread_rank() == 0) a.pending[i] = kBucketFull;
        return;
      }
      claimed = claim_slot(tile, t, base, word, slot, digest);
    }
    if (claimed) {
      // A host row (only in a table without device rows) is written after the kernels, in
      // address order with the call's other host-row copies: written from here, rows spread
      // over a 16 GiB host tier move at the 7.8 GB/s of random rows ("Host link" table of
      // genrec_table_bench).
      const uint64_t host_row = kHostRows ? host_row_of(t, base + slot) : kNoHostRow;
      if (host_row != kNoHostRow) queue_host_row(tile, a.host_queue, i, host_row | kNewHostRow);
      write_new_row(tile, t, a, i, key, base + slot, host_row != kNoHostRow);
      if (tile.thread_rank() == 0) atomicAdd(&added, 1ull);
    }
    finish_insert<kHostRows>(tile, t, a, i, key, static_cast<int64_t>(base + slot), claimed);
  });
  end_block_count(added, t.size);
}

// Evicts the victim of a full bucket `base` (choose_victim): its key, score, stamp and row go to
// a.evicted and its key to the removal log; a row demoted earlier in this call is read from its
// staging row and its queued host-row copy is cancelled. Returns the freed slot, or -1 when
// every slot holds a key of this batch. Under the bucket lock.
__device__ __forceinline__ int evict_lowest(const Tile& tile, const TableView& t,
                                            const BatchArgs& a, uint64_t base) {
  uint64_t key = 0, score = 0;
  const int v = choose_victim(tile, t, base, a.batch, &key, &score);
  if (v < 0) return -1;
  const int64_t row_dim = a.dim + a.state_dim;
  const uint64_t mark = load_relaxed(&t.slots[base + v].mark);
  const bool staged = demoted_in(mark, a.batch);
  const int64_t mover = demoted_by(mark);
  write_out_victim(tile, a.evicted, staged ? a.demoted + mover * row_dim : row_ptr(t, base + v),
                   row_dim, key, score, &t.slots[base + v].stamp);
  if (tile.thread_rank() == 0) {
    if (staged) a.host_queue.rows[mover] = kNoHostRow;
    log_removal(a.removals, key, a.step);
  }
  return v;
}

// Moves the device row with the lowest (score, key) outside the batch into host slot `to` of
// bucket `base` (free, or a victim's), for occurrence i's new key to take its device slot, which
// is returned (-1: every device row belongs to the batch). The row is staged in a.demoted row i
// and written to host memory by copy_host_rows in address order with the call's other host rows;
// key, digest, score and stamp move now. Under the bucket lock, with every present key of the
// call marked, so no occurrence of the call reads the moved row.
__device__ __forceinline__ int demote_device_row(const Tile& tile, const TableView& t,
                                                 const BatchArgs& a, int64_t i, uint64_t base,
                                                 int to) {
  uint64_t key = 0, score = 0;
  const int from =
      choose_victim(tile, t, base, a.batch, &key, &score, 0, static_cast<int>(t.hbm_per_bucket));
  if (from < 0) return -1;
  const int64_t row_dim = a.dim + a.state_dim;
  tile_copy<true>(tile, a.demoted + i * row_dim, row_ptr(t, base + from), row_dim);
  if (tile.thread_rank() == 0) {
    Slot& dst = t.slots[base + to];
    const Slot& src = t.slots[base + from];
    dst.score = score;
    dst.stamp = load_relaxed(&src.stamp);
    dst.mark = demoted_mark(a.batch, i);
    store_relaxed(&dst.key, key);
    t.digests[base + to] = t.digests[base + from];
    a.host_queue.rows[i] = host_row_of(t, base + to) | kDemotedHostRow;
  }
  tile.sync();  // the row is staged before the new key's row overwrites it
  return from;
}

// The free host slot of a bucket (slots [device_slots, kBucketSlots)) that a row moving to host
// memory takes, or -1: the first free one from host slot `stripe` on, wrapping. Host rows are
// slot-major (host slot k of every bucket is one contiguous stripe of rows), so a call whose
// moved rows all aim at one stripe writes them close together (fewer address translations per
// row), where each bucket's own lowest free slot spreads them over the tens of stripes its fill
// varies by (insert_or_assign with 40% new keys, dim 64, H100: 0.258 -> 0.355 B-KV/s).
__device__ __forceinline__ int free_host_slot(const Tile& tile, uint64_t word, int device_slots,
                                              int stripe) {
  const int from = device_slots + stripe;
  const int slot = lowest_free_slot_in(tile, word, from, kBucketSlots);
  return slot >= 0 ? slot : lowest_free_slot_in(tile, word, device_slots, from);
}

// Inserts the keys the insert kernel left (a full bucket, or with host rows no free device
// slot), under the bucket lock: probe once more (a duplicate may have inserted the key here),
// else take a free slot, else evict the row outside the batch with the lowest (score, key) (none
// when every slot holds a key of this batch: the key is not stored). A slot whose row is in host
// memory goes to the lowest-scored device row outside the batch instead (demote_device_row), and
// the new key takes that device slot: new keys, the likeliest to be read again soon, are read
// from device memory, and host memory holds the rows least recently (or least often) used.
// With device and host rows, the free host slot is the first from the stripe of the table's
// fill level (host rows per bucket on average, see free_host_slot).
__global__ void __launch_bounds__(kThreads) evict_kernel(TableView t, BatchArgs a) {
  __shared__ unsigned long long added;
  begin_block_count(added);
  const int device_slots = static_cast<int>(t.hbm_per_bucket);
  const bool split = t.splits_rows();
  const int64_t fill_level = static_cast<int64_t>(load_relaxed(t.size) / (t.bucket_mask + 1));
  const int stripe =
      split ? static_cast<int>(min(max(fill_level - device_slots, int64_t{0}),
                                   static_cast<int64_t>(kBucketSlots - device_slots - 1)))
            : 0;
  for_each_flagged_key(a.pending, kBucketFull, a.n, [&](const Tile& tile, int64_t i) {
    const uint64_t key = a.keys[i];
    const uint64_t h = mix64(key), b = h & t.bucket_mask, base = b * kBucketSlots;
    const uint32_t digest = digest_of(h);
    lock_bucket(tile, t.locks + b);
    const uint64_t word = lane_digests<true>(tile, t, b);
    int slot = find_in_bucket<true>(tile, t, b, word, key, digest);
    bool inserted = false;
    if (slot < 0) {
      if (split) {
        slot = lowest_free_slot_in(tile, word, 0, device_slots);
        if (slot < 0) slot = free_host_slot(tile, word, device_slots, stripe);
      } else {
        slot = lowest_free_slot(tile, word);
      }
      if (slot >= 0) {
        if (tile.thread_rank() == 0) atomicAdd(&added, 1ull);
      } else {
        slot = evict_lowest(tile, t, a, base);
      }
      if (split && slot >= device_slots) {
        const int from = demote_device_row(tile, t, a, i, base, slot);
        if (from >= 0) slot = from;
      }
      if (slot >= 0) {
        inserted = true;
        if (tile.thread_rank() == 0) t.digests[base + slot] = static_cast<uint8_t>(digest);
        write_new_row(tile, t, a, i, key, base + slot);
      }
    }
    unlock_bucket(tile, t.locks + b);
    finish_insert<true>(tile, t, a, i, key, slot >= 0 ? static_cast<int64_t>(base + slot) : -1,
                        inserted);
  });
  end_block_count(added, t.size);
}

// Rewrites the queued rows (see mark_and_write) from the occurrence each mark names. The last
// block to finish zeroes the queue's counters for the next call.
__global__ void __launch_bounds__(kThreads) rewrite_kernel(TableView t, BatchArgs a) {
  const int64_t queued = static_cast<int64_t>(t.rewrites[0]);
  for_each_key(queued, [&](const Tile& tile, int64_t r) {
    const uint64_t s = static_cast<uint64_t>(a.rewrites[2 * r]);
    const int64_t i = a.rewrites[2 * r + 1];
    if ((t.slots[s].mark & kLow32) != static_cast<uint64_t>(i + 1)) return;
    if (a.values_in != nullptr) {
      tile_copy<false>(tile, row_ptr(t, s), a.values_in + i * a.dim, a.dim);
    }
    if (a.custom != nullptr && tile.thread_rank() == 0) t.slots[s].score = a.custom[i];
  });
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();  // the block has read the count before it counts itself done
    if (atomicAdd(t.rewrites + 1, 1ull) == gridDim.x - 1) {
      t.rewrites[0] = 0;
      t.rewrites[1] = 0;
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    erase_kernel(TableView t, const uint64_t* keys, int64_t n, uint8_t* erased, RemovalSink log,
                 uint64_t step) {
  __shared__ unsigned long long removed;  // negated: added in two's complement
  begin_block_count(removed);
  for_each_key(n, [&](const Tile& tile, int64_t i) {
    const uint64_t key = keys[i];
    uint64_t b = 0;
    const int slot = locate<true>(tile, t, key, b);
    if (tile.thread_rank() != 0) return;
    bool done = false;
    if (slot >= 0) {
      // Duplicates race for the same slot: exactly one CAS frees it.
      auto* word = reinterpret_cast<unsigned long long*>(&t.slots[b * kBucketSlots + slot].key);
      done = atomicCAS(word, key, kEmptyKey) == key;
      if (done) {
        t.digests[b * kBucketSlots + slot] = 0;  // free: no insertion runs during an erase
        atomicAdd(&removed, ~0ull);              // -1
        log_removal(log, key, step);
      }
    }
    if (erased != nullptr) erased[i] = done;
  });
  end_block_count(removed, t.size);
}

__global__ void __launch_bounds__(kThreads)
    export_kernel(TableView t, int64_t offset, int64_t end, uint64_t min_score, uint64_t min_stamp,
                  uint64_t* keys_out, float* values_out, float* states_out, uint64_t* scores_out,
                  uint64_t* stamps_out, unsigned long long* count, int64_t dim, int64_t state_dim) {
  const Tile tile = cg::tiled_partition<kTile>(cg::this_thread_block());
  const int lane = static_cast<int>(tile.thread_rank());
  const int64_t tiles = static_cast<int64_t>(gridDim.x) * kTilesPerBlock;
  for (int64_t first =
           offset +
           (static_cast<int64_t>(blockIdx.x) * kTilesPerBlock + tile.meta_group_rank()) * kTile;
       first < end; first += tiles * kTile) {
    const int64_t s = first + lane;
    uint64_t key = kEmptyKey, score = 0, stamp = 0;
    bool take = false;
    if (s < end) {
      key = t.slots[s].key;
      if (key != kEmptyKey) {
        score = t.slots[s].score;
        if (stamps_out != nullptr || min_stamp > 0) stamp = t.slots[s].stamp;
        take = score >= min_score && stamp >= min_stamp;
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
      if (stamps_out != nullptr) stamps_out[out] = stamp;
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

// Logs the key of every occupied slot (clear): a warp appends its keys at one atomic.
__global__ void __launch_bounds__(kThreads)
    log_keys_kernel(TableView t, int64_t slots, RemovalSink log, uint64_t step) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  // Whole warps iterate together, so the ballots see every lane.
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + (threadIdx.x & ~31u);
       first < slots; first += stride) {
    const int64_t s = first + lane;
    const uint64_t key = s < slots ? t.slots[s].key : kEmptyKey;
    const unsigned live = __ballot_sync(0xFFFFFFFFu, key != kEmptyKey);
    if (live == 0) continue;
    unsigned long long at = 0;
    if (lane == 0) at = atomicAdd(log.count, static_cast<unsigned long long>(__popc(live)));
    at = __shfl_sync(0xFFFFFFFFu, at, 0) + __popc(live & ((1u << lane) - 1));
    if (key != kEmptyKey) {
      log.keys[at] = key;
      log.steps[at] = step;
    }
  }
}

// Moves every row of `from` into the larger `to`; rows whose new bucket is full are counted in
// *failures (the caller retries with more buckets).
__global__ void __launch_bounds__(kThreads)
    rehash_kernel(TableView from, TableView to, int64_t slots, int64_t row_dim,
                  unsigned long long* failures) {
  for_each_key(slots, [&](const Tile& tile, int64_t s) {
    const uint64_t key = from.slots[s].key;
    if (key == kEmptyKey) return;
    const int lane = static_cast<int>(tile.thread_rank());
    const uint64_t h = mix64(key), b = h & to.bucket_mask, base = b * kBucketSlots;
    lock_bucket(tile, to.locks + b);
    const uint64_t word = lane_digests<true>(tile, to, b);
    const int slot = lowest_free_slot(tile, word);
    if (slot >= 0) {
      const uint64_t at = base + slot;
      if (lane == 0) {  // before the row copy, which then holds fewer registers (no spill)
        store_relaxed(&to.slots[at].key, key);
        to.digests[at] = static_cast<uint8_t>(digest_of(h));
        to.slots[at].score = from.slots[s].score;
        to.slots[at].stamp = from.slots[s].stamp;
        atomicAdd(to.size, 1ull);
      }
      tile_copy<false>(tile, row_ptr(to, at), row_ptr(from, s), row_dim);
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

constexpr unsigned kRewriteBlocks = 512;

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
  if (options.log_removals) removals_ = std::make_unique<DeviceRemovalLog>();
  int device = 0, sms = 0, per_sm = 0;
  GENREC_CUDA_CHECK(cudaGetDevice(&device));
  GENREC_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  // Both insert kernels have the same launch bounds, so either gives the count.
  GENREC_CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, insert_kernel<true>, kThreads, 0));
  insert_blocks_ = static_cast<unsigned>(std::max(1, sms * per_sm));
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
  GENREC_CHECK(n >= 0 && n < int64_t{1} << 31,
               "CUDA dynamic table {}: batch size {} outside [0, 2^31)", op, n);
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
                            cudaStream_t stream, float* states_out, uint64_t* scores_out,
                            uint64_t* stamps_out) const {
  GENREC_CHECK(n >= 0, "CUDA dynamic table find: negative batch size {}", n);
  if (n == 0) return;
  GENREC_CHECK(keys != nullptr, "CUDA dynamic table find: null keys");
  auto lock = begin(stream);
  const TableView& t = storage_->view();
  float* states = state_dim_ > 0 ? states_out : nullptr;
  if (storage_->host_slots() > 0 && values_out != nullptr) {
    HostRowCopies copies(n, stream);  // host rows in address order (host_row_copies.h)
    find_kernel<true><<<grid_for_keys(n), kThreads, 0, stream>>>(t, keys, n, values_out, found,
                                                                 states, scores_out, stamps_out,
                                                                 dim(), state_dim_, copies.queue());
    GENREC_CUDA_LAUNCH_CHECK("dynamic table find");
    HostRowCopy copy;
    copy.values_out = values_out;
    copy.states_out = states;
    copy.dim = dim();
    copy.state_dim = state_dim_;
    copies.run(t, storage_->host_slots(), copy, stream);
  } else {
    find_kernel<false><<<grid_for_keys(n), kThreads, 0, stream>>>(
        t, keys, n, values_out, found, states, scores_out, stamps_out, dim(), state_dim_,
        HostRowQueue{});
    GENREC_CUDA_LAUNCH_CHECK("dynamic table find");
  }
  end(stream);
}

void CudaDynamicTable::contains(const uint64_t* keys, int64_t n, uint8_t* out,
                                cudaStream_t stream) const {
  find(keys, n, nullptr, out, stream);
}

RemovalSink CudaDynamicTable::log_room(int64_t n, cudaStream_t stream) {
  return removals_ != nullptr ? removals_->make_room(n, stream) : RemovalSink{};
}

uint32_t CudaDynamicTable::next_batch(cudaStream_t stream) {
  if (batch_ == 0xFFFFFFFFu) {  // marks of old batches would alias new ids
    storage_->clear_marks(stream);
    batch_ = 0;
  }
  return ++batch_;
}

void CudaDynamicTable::run_batch(BatchOp op, const uint64_t* keys, int64_t n,
                                 const float* values_in, float* values_out, uint8_t* flags,
                                 const uint64_t* scores, const EvictedRows* evicted,
                                 cudaStream_t stream) {
  if (n == 0) return;
  auto lock = begin(stream);
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
  a.batch = next_batch(stream);
  a.policy = options_.eviction;
  a.op = op;
  const bool inserting = op != BatchOp::kAssign;
  // Each key evicts at most one row, only in the evict kernel.
  if (inserting) a.removals = log_room(n, stream);
  DeviceBuffer<uint8_t> pending(inserting ? n : 0, stream);
  a.pending = pending.data();
  const bool writing = op != BatchOp::kFindOrInsert || scores != nullptr;
  DeviceBuffer<int64_t> rewrites(writing ? 2 * n : 0, stream);
  a.rewrites = rewrites.data();
  const TableView& t = storage_->view();
  const unsigned grid = grid_for_keys(n);
  // Host rows of present keys move in address order after the kernels (host_row_copies.h).
  const bool queue = storage_->host_slots() > 0;
  std::optional<HostRowCopies> copies;
  if (queue) a.host_queue = copies.emplace(n, stream).queue();
  // Staging for the device rows the evict kernel moves to host slots (one per key at most).
  DeviceBuffer<float> demoted(inserting && t.splits_rows() ? n * (a.dim + a.state_dim) : 0, stream);
  a.demoted = demoted.data();
  if (writing) {
    if (queue) {
      lookup_kernel<true, true><<<grid, kThreads, 0, stream>>>(t, a);
    } else {
      lookup_kernel<true, false><<<grid, kThreads, 0, stream>>>(t, a);
    }
  } else if (queue) {
    lookup_kernel<false, true><<<grid, kThreads, 0, stream>>>(t, a);
  } else {
    lookup_kernel<false, false><<<grid, kThreads, 0, stream>>>(t, a);
  }
  GENREC_CUDA_LAUNCH_CHECK("dynamic table lookup");
  if (op == BatchOp::kFindOrInsert && options_.admission != nullptr) {
    admit_pending(*options_.admission, keys, n, a.pending, flags, values_out, a.dim, a.init,
                  stream);
  }
  if (inserting) {
    // Resident blocks striding over the batch: with a block per 16 keys, each block lasted as
    // long as its slowest key (a lock wait), its other warps idle at the count's barrier.
    const unsigned insert_grid = std::min(grid, insert_blocks_);
    if (queue) {
      insert_kernel<true><<<insert_grid, kThreads, 0, stream>>>(t, a);
    } else {
      insert_kernel<false><<<insert_grid, kThreads, 0, stream>>>(t, a);
    }
    GENREC_CUDA_LAUNCH_CHECK("dynamic table insert");
    // Few keys (those of full buckets): the blocks pick them out kThreads flags at a time.
    const auto evict_grid = static_cast<unsigned>((n + kThreads - 1) / kThreads);
    evict_kernel<<<std::min(evict_grid, insert_blocks_), kThreads, 0, stream>>>(t, a);
    GENREC_CUDA_LAUNCH_CHECK("dynamic table evict");
  }
  if (writing) {
    // Rewrites are rare (duplicates that raced): a small grid strides over the queue.
    rewrite_kernel<<<std::min(grid, kRewriteBlocks), kThreads, 0, stream>>>(t, a);
    GENREC_CUDA_LAUNCH_CHECK("dynamic table rewrite");
  }
  if (queue) {
    HostRowCopy copy;
    copy.dim = a.dim;
    copy.state_dim = a.state_dim;
    copy.state0 = a.init.state0;
    copy.batch = a.batch;
    copy.demoted = a.demoted;
    if (op == BatchOp::kFindOrInsert) {
      copy.values_out = values_out;
    } else {
      copy.values_in = values_in;
    }
    copies->run(t, storage_->host_slots(), copy, stream);
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
  const RemovalSink log = log_room(n, stream);
  erase_kernel<<<grid_for_keys(n), kThreads, 0, stream>>>(storage_->view(), keys, n, erased, log,
                                                          step_.load());
  GENREC_CUDA_LAUNCH_CHECK("dynamic table erase");
  end(stream);
}

void CudaDynamicTable::erase(const std::vector<uint64_t>& keys, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(keys.size());
  if (n == 0) return;
  DeviceBuffer<uint64_t> device_keys(n, stream);
  GENREC_CUDA_CHECK(cudaMemcpyAsync(device_keys.data(), keys.data(), sizeof(uint64_t) * n,
                                    cudaMemcpyHostToDevice, stream));
  erase(device_keys.data(), n, stream);
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
}

void CudaDynamicTable::launch_export(int64_t offset, int64_t num_slots, uint64_t* keys_out,
                                     float* values_out, int64_t* count, cudaStream_t stream,
                                     float* states_out, uint64_t* scores_out, uint64_t min_score,
                                     uint64_t* stamps_out, uint64_t min_stamp) const {
  const int64_t end = std::min(offset + num_slots, capacity());
  if (offset >= end) return;
  const unsigned grid = grid_for_keys((end - offset + kTile - 1) / kTile);
  export_kernel<<<grid, kThreads, 0, stream>>>(
      storage_->view(), offset, end, min_score, min_stamp, keys_out, values_out,
      state_dim_ > 0 ? states_out : nullptr, scores_out, stamps_out,
      reinterpret_cast<unsigned long long*>(count), dim(), state_dim_);
  GENREC_CUDA_LAUNCH_CHECK("dynamic table export");
}

void CudaDynamicTable::export_batch(int64_t offset, int64_t num_slots, uint64_t* keys_out,
                                    float* values_out, int64_t* count, cudaStream_t stream,
                                    float* states_out, uint64_t* scores_out, uint64_t min_score,
                                    uint64_t* stamps_out, uint64_t min_stamp) const {
  GENREC_CHECK(offset >= 0 && num_slots >= 0,
               "CUDA dynamic table export_batch: negative offset {} or slot count {}", offset,
               num_slots);
  GENREC_CHECK(keys_out != nullptr && values_out != nullptr && count != nullptr,
               "CUDA dynamic table export_batch: null output");
  auto lock = begin(stream);
  launch_export(offset, num_slots, keys_out, values_out, count, stream, states_out, scores_out,
                min_score, stamps_out, min_stamp);
  end(stream);
}

TableRows CudaDynamicTable::export_rows(uint64_t min_score, cudaStream_t stream,
                                        uint64_t min_stamp) const {
  const int64_t chunk = std::min<int64_t>(capacity(), int64_t{1} << 20);
  const int64_t d = dim(), sd = state_dim_;
  DeviceBuffer<uint64_t> keys(chunk, stream), scores(chunk, stream), stamps(chunk, stream);
  DeviceBuffer<float> values(chunk * d, stream), states(chunk * sd, stream);
  DeviceBuffer<int64_t> count(1, stream);
  TableRows rows;
  {
    auto lock = begin(stream);
    for (int64_t offset = 0; offset < capacity(); offset += chunk) {
      GENREC_CUDA_CHECK(cudaMemsetAsync(count.data(), 0, sizeof(int64_t), stream));
      launch_export(offset, chunk, keys.data(), values.data(), count.data(), stream, states.data(),
                    scores.data(), min_score, stamps.data(), min_stamp);
      int64_t got = 0;
      GENREC_CUDA_CHECK(
          cudaMemcpyAsync(&got, count.data(), sizeof(got), cudaMemcpyDeviceToHost, stream));
      GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
      if (got == 0) continue;
      const size_t at = rows.keys.size();
      rows.keys.resize(at + got);
      rows.scores.resize(at + got);
      rows.stamps.resize(at + got);
      rows.values.resize((at + got) * d);
      rows.states.resize((at + got) * sd);
      auto download = [&](void* dst, const void* src, size_t bytes) {
        if (bytes > 0) {
          GENREC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
        }
      };
      download(rows.keys.data() + at, keys.data(), sizeof(uint64_t) * got);
      download(rows.scores.data() + at, scores.data(), sizeof(uint64_t) * got);
      download(rows.stamps.data() + at, stamps.data(), sizeof(uint64_t) * got);
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
  sorted.stamps.resize(n);
  sorted.values.resize(n * d);
  sorted.states.resize(n * sd);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t o = order[r];
    sorted.keys[r] = rows.keys[o];
    sorted.scores[r] = rows.scores[o];
    sorted.stamps[r] = rows.stamps[o];
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
  if (removals_ != nullptr) {
    // Every row is a removal: room for the size, then the keys straight from the slots.
    unsigned long long live = 0;
    GENREC_CUDA_CHECK(cudaMemcpyAsync(&live, storage_->view().size, sizeof(live),
                                      cudaMemcpyDeviceToHost, stream));
    GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (live > 0) {
      const RemovalSink log = log_room(static_cast<int64_t>(live), stream);
      const int64_t slots = storage_->slots();
      const auto grid = static_cast<unsigned>(
          std::clamp<int64_t>((slots + kThreads - 1) / kThreads, 1, int64_t{1} << 20));
      log_keys_kernel<<<grid, kThreads, 0, stream>>>(storage_->view(), slots, log, step_.load());
      GENREC_CUDA_LAUNCH_CHECK("dynamic table clear log");
    }
  }
  storage_->clear(stream);
  end(stream);
}

std::vector<uint64_t> CudaDynamicTable::removed_since(uint64_t step, cudaStream_t stream) const {
  if (removals_ == nullptr) return {};
  auto lock = begin(stream);
  std::vector<uint64_t> keys = removals_->since(step, stream);
  end(stream);
  return keys;
}

void CudaDynamicTable::forget_removals(uint64_t step, cudaStream_t stream) {
  if (removals_ == nullptr) return;
  auto lock = begin(stream);
  removals_->forget(step, stream);
  end(stream);
}

}  // namespace genrec::cuda

// ---------------------------------------------------------------------------------------------
// insert_rows: whole rows (values, optimizer state, score, stamp) inserted or overwritten
// exactly, as the tiers move them. Kept apart from the kernels above: it only reuses their helpers.
// ---------------------------------------------------------------------------------------------

namespace genrec::cuda {
namespace table {
namespace {

struct RowsArgs {
  const uint64_t* keys = nullptr;
  const float* values = nullptr;
  const float* states = nullptr;
  const uint64_t* scores = nullptr;
  const uint64_t* stamps = nullptr;  // null: every row gets `step`
  int64_t n = 0;
  uint8_t* stored = nullptr;
  EvictedRows evicted;
  RemovalSink removals;  // the rows it evicts are logged here
  int64_t dim = 0, state_dim = 0;
  uint64_t step = 0;
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
      atomicMax(reinterpret_cast<unsigned long long*>(&t.slots[b * kBucketSlots + slot].mark),
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
      const uint64_t h = mix64(key), b = h & t.bucket_mask, base = b * kBucketSlots;
      const uint32_t digest = digest_of(h);
      const int64_t row_dim = a.dim + a.state_dim;
      lock_bucket(tile, t.locks + b);
      const uint64_t word = lane_digests<true>(tile, t, b);
      int slot = find_in_bucket<true>(tile, t, b, word, key, digest);
      const bool fresh = slot < 0;
      bool evicting = false;
      uint64_t victim_key = 0, victim_score = 0;
      if (fresh) {
        slot = lowest_free_slot(tile, word);
        if (slot < 0) {
          slot = choose_victim(tile, t, base, a.batch, &victim_key, &victim_score);
          evicting = slot >= 0;
        }
      }
      if (slot >= 0) {
        stored = true;
        float* row = row_ptr(t, base + slot);
        if (evicting) {
          write_out_victim(tile, a.evicted, row, row_dim, victim_key, victim_score,
                           &t.slots[base + slot].stamp);
          if (lane == 0) log_removal(a.removals, victim_key, a.step);
        }
        tile_copy<false>(tile, row, a.values + i * a.dim, a.dim);
        if (a.state_dim > 0) {
          tile_copy<false>(tile, row + a.dim, a.states + i * a.state_dim, a.state_dim);
        }
        if (lane == 0) {
          store_relaxed(&t.slots[base + slot].score, a.scores[i]);
          store_relaxed(&t.slots[base + slot].stamp, a.stamps != nullptr ? a.stamps[i] : a.step);
          if (fresh) {
            store_relaxed(&t.slots[base + slot].mark, static_cast<uint64_t>(a.batch) << 32);
            t.digests[base + slot] = static_cast<uint8_t>(digest);
            if (!evicting) atomicAdd(t.size, 1ull);
          }
        }
        if (fresh) publish_key(tile, &t.slots[base + slot].key, key);
      }
      unlock_bucket(tile, t.locks + b);
    }
    if (lane == 0 && a.stored != nullptr) a.stored[i] = stored;
  });
}

}  // namespace
}  // namespace table

void CudaDynamicTable::launch_insert_rows(const uint64_t* keys, const float* values,
                                          const float* states, const uint64_t* scores,
                                          const uint64_t* stamps, int64_t n, uint8_t* stored,
                                          const EvictedRows* evicted, const uint64_t* pinned,
                                          int64_t num_pinned, uint32_t batch,
                                          const RemovalSink& removals, cudaStream_t stream) {
  table::RowsArgs a;
  a.keys = keys;
  a.values = values;
  a.states = states;
  a.scores = scores;
  a.stamps = stamps;
  a.n = n;
  a.stored = stored;
  if (evicted != nullptr) a.evicted = *evicted;
  a.removals = removals;
  a.dim = dim();
  a.state_dim = state_dim_;
  a.step = step_.load();
  a.batch = batch;
  const TableView& t = storage_->view();
  table::pin_kernel<<<grid_for_keys(n + num_pinned), kThreads, 0, stream>>>(t, keys, n, pinned,
                                                                            num_pinned, a.batch);
  GENREC_CUDA_LAUNCH_CHECK("dynamic table pin");
  table::insert_rows_kernel<<<grid_for_keys(n), kThreads, 0, stream>>>(t, a);
  GENREC_CUDA_LAUNCH_CHECK("dynamic table insert_rows");
}

void CudaDynamicTable::insert_rows(const uint64_t* keys, const float* values, const float* states,
                                   const uint64_t* scores, int64_t n, cudaStream_t stream,
                                   uint8_t* stored, const EvictedRows* evicted,
                                   const uint64_t* pinned, int64_t num_pinned,
                                   const uint64_t* stamps) {
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
  const uint32_t batch = next_batch(stream);
  launch_insert_rows(keys, values, states, scores, stamps, n, stored, evicted, pinned, num_pinned,
                     batch, log_room(n, stream), stream);
  end(stream);
}

int64_t CudaDynamicTable::insert_rows(const TableRows& rows, cudaStream_t stream) {
  const int64_t n = rows.size(), d = dim(), sd = state_dim_;
  GENREC_CHECK(static_cast<int64_t>(rows.values.size()) == n * d &&
                   static_cast<int64_t>(rows.states.size()) == n * sd &&
                   static_cast<int64_t>(rows.scores.size()) == n &&
                   static_cast<int64_t>(rows.stamps.size()) == n,
               "CUDA dynamic table insert_rows: {} keys need {} values, {} states, {} scores and "
               "stamps; got {}, {}, {}, {}",
               n, n * d, n * sd, n, rows.values.size(), rows.states.size(), rows.scores.size(),
               rows.stamps.size());
  if (n == 0) return 0;
  const int64_t chunk = std::min<int64_t>(n, int64_t{1} << 20);
  DeviceBuffer<uint64_t> keys(chunk, stream), scores(chunk, stream), stamps(chunk, stream);
  DeviceBuffer<float> values(chunk * d, stream), states(chunk * sd, stream);
  DeviceBuffer<uint8_t> stored(chunk, stream);
  std::vector<uint8_t> h_stored(chunk);
  auto upload = [&](void* dst, const void* src, size_t bytes) {
    if (bytes > 0) {
      GENREC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
    }
  };
  int64_t total = 0;
  auto lock = begin(stream);
  // One batch id for every chunk: the rows of earlier chunks carry its mark, so later chunks
  // never evict them.
  const uint32_t batch = next_batch(stream);
  for (int64_t at = 0; at < n; at += chunk) {
    const int64_t m = std::min(chunk, n - at);
    upload(keys.data(), rows.keys.data() + at, sizeof(uint64_t) * m);
    upload(scores.data(), rows.scores.data() + at, sizeof(uint64_t) * m);
    upload(stamps.data(), rows.stamps.data() + at, sizeof(uint64_t) * m);
    upload(values.data(), rows.values.data() + at * d, sizeof(float) * m * d);
    upload(states.data(), rows.states.data() + at * sd, sizeof(float) * m * sd);
    // Room per chunk (each row evicts at most one): the log's bound follows the chunks' real
    // removals (each chunk synchronizes), not the rows of a whole load.
    launch_insert_rows(keys.data(), values.data(), states.data(), scores.data(), stamps.data(), m,
                       stored.data(), nullptr, nullptr, 0, batch, log_room(m, stream), stream);
    GENREC_CUDA_CHECK(
        cudaMemcpyAsync(h_stored.data(), stored.data(), m, cudaMemcpyDeviceToHost, stream));
    GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
    total += std::count(h_stored.begin(), h_stored.begin() + m, uint8_t{1});
  }
  end(stream);
  return total;
}

}  // namespace genrec::cuda
