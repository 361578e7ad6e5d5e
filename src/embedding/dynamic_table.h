// DynamicTable: embeddings keyed by 64-bit ids in a CPU hash table, the reference for the CUDA
// table. The table is split by key hash into shards, each an open-addressing (linear probing,
// backward-shift erase) array whose slots hold whole rows, so two keys never share a row; a
// shard mutex serializes the keys of one shard and a batch's shards run in parallel. A batch
// behaves as if its keys were processed one by one in batch order: a duplicate key sees the
// effect of its earlier occurrences (find_or_insert inserts once and then finds the row,
// insert_or_assign keeps the last value, every occurrence counts as one access for LFU).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string_view>
#include <vector>

#include "embedding/admission.h"
#include "embedding/eviction.h"
#include "embedding/removal_log.h"

namespace genrec {

// The reserved empty key: no row may have it (int64 -1 has the same bits).
constexpr uint64_t kEmptyKey = ~uint64_t{0};

enum class OptimizerState {
  kNone,     // no state
  kAdam,     // m (dim), v (dim), per-row step count (1 float, exact up to 2^24)
  kAdagrad,  // row-wise accumulator (1 float)
};
std::string_view optimizer_state_name(OptimizerState state);
// Floats of optimizer state per row of `dim` floats.
int64_t optimizer_state_dim(OptimizerState state, int64_t dim);

enum class InitKind { kZeros, kUniform, kNormal };

// Values of a new row. Element j of key k depends only on (seed, k, j) through Philox, so a key
// gets the same initial row whatever the batch, thread or table it is inserted in.
struct Initializer {
  InitKind kind = InitKind::kZeros;
  float scale = 0.0f;  // bound a of uniform(-a, a); standard deviation of normal(0, s)
  uint64_t seed = 0;
  void fill(uint64_t key, float* row, int64_t dim) const;
};

struct TableOptions {
  int64_t dim = 0;
  OptimizerState optimizer = OptimizerState::kNone;
  float initial_state = 0.0f;  // initial Adagrad accumulator (Adam state starts at zero)
  Initializer initializer;
  int64_t initial_capacity = 1024;  // slots, over all shards
  int64_t max_capacity = 0;         // rows; 0 = unbounded (grow); else full tables evict
  double max_load_factor = 0.75;    // a shard doubles its slots beyond this occupancy
  int num_shards = 32;              // power of two
  EvictionPolicy eviction = EvictionPolicy::kLru;
  std::shared_ptr<CountingFilter> admission;  // null: every new key is admitted
  // Log removed keys for incremental dumps' tombstones (removed_since). The tiers of a tiered
  // table do not: moving a row between tiers removes it from one, and the tiered table logs
  // what leaves all of them.
  bool log_removals = true;

  // These options for a tier of a tiered table (no removal log).
  TableOptions as_tier() const {
    TableOptions tier = *this;
    tier.log_removals = false;
    return tier;
  }
};

// A host-side batch of rows: what export, eviction and the tiers pass around.
struct TableRows {
  std::vector<uint64_t> keys;
  std::vector<float> values;  // size() x dim
  std::vector<float> states;  // size() x state_dim
  std::vector<uint64_t> scores;
  std::vector<uint64_t> stamps;  // table step of the row's last write
  int64_t size() const { return static_cast<int64_t>(keys.size()); }
  void clear();
  void append(const TableRows& other);
  void append_row(const TableRows& other, int64_t i);  // row i of `other`
};

class DynamicTable {
 public:
  explicit DynamicTable(const TableOptions& options);
  ~DynamicTable();
  DynamicTable(const DynamicTable&) = delete;
  DynamicTable& operator=(const DynamicTable&) = delete;

  int64_t dim() const { return options_.dim; }
  int64_t state_dim() const { return state_dim_; }
  const TableOptions& options() const { return options_; }
  int64_t size() const { return size_.load(); }
  int64_t capacity() const;  // slots over all shards
  int64_t max_capacity() const { return options_.max_capacity; }

  // The clock of scores and stamps: LRU scores and write stamps take the current step, the
  // epoch policies the current epoch. Set by the trainer (e.g. once per batch).
  void set_step(uint64_t step) { step_.store(step); }
  uint64_t step() const { return step_.load(); }
  void set_epoch(uint64_t epoch) { epoch_.store(epoch); }
  uint64_t epoch() const { return epoch_.load(); }

  // Copies the rows of present keys to values_out (n x dim); found[i] = 1 when present, else
  // 0 and the row of values_out is left untouched. Optional: states_out (n x state_dim),
  // scores_out, stamps_out. Read-only: scores are not changed by find.
  void find(const uint64_t* keys, int64_t n, float* values_out, uint8_t* found,
            float* states_out = nullptr, uint64_t* scores_out = nullptr,
            uint64_t* stamps_out = nullptr) const;

  // Finds each key, inserting absent ones with the initializer (optimizer state zeroed), and
  // copies the rows to values_out; every occurrence is one access (score update). stored[i] =
  // 0 when the key was not stored: refused by admission, or a full table had no unpinned row
  // to evict; values_out then holds the initializer's row. scores: per-key scores, required by
  // kCustom and refused otherwise. Rows evicted to make room are appended to `evicted`.
  void find_or_insert(const uint64_t* keys, int64_t n, float* values_out, uint8_t* stored = nullptr,
                      const uint64_t* scores = nullptr, TableRows* evicted = nullptr);
  // Inserts or overwrites rows (new rows get zeroed optimizer state); an access and a write.
  void insert_or_assign(const uint64_t* keys, const float* values, int64_t n,
                        const uint64_t* scores = nullptr, TableRows* evicted = nullptr,
                        uint8_t* stored = nullptr);
  // Overwrites present rows only; returns how many occurrences were assigned.
  int64_t assign(const uint64_t* keys, const float* values, int64_t n,
                 const uint64_t* scores = nullptr);
  // Removes present keys; returns how many rows were removed.
  int64_t erase(const uint64_t* keys, int64_t n);
  void contains(const uint64_t* keys, int64_t n, uint8_t* out) const;
  bool contains(uint64_t key) const;

  // Inserts or overwrites whole rows exactly (values, states, scores, stamps), as load and the
  // tiers need; no policy update. Keys in `pinned` are protected from eviction as well.
  // stored (optional, rows.size()) says which rows were stored.
  void insert_rows(const TableRows& rows, TableRows* evicted = nullptr,
                   const uint64_t* pinned = nullptr, int64_t num_pinned = 0,
                   uint8_t* stored = nullptr);
  // find_or_insert with extra pinned keys (the tiers pin the whole lookup batch).
  void find_or_insert_pinned(const uint64_t* keys, int64_t n, float* values_out, uint8_t* stored,
                             const uint64_t* scores, TableRows* evicted, const uint64_t* pinned,
                             int64_t num_pinned);

  // Calls fn(i, value, state) on the row of each present key (keys must be distinct), under
  // the row's shard lock, and stamps it as written; found[i] (optional) says which were
  // present. Shards run in parallel: fn must only touch its own row and thread-safe data.
  int64_t update_rows(const uint64_t* keys, int64_t n,
                      const std::function<void(int64_t, float*, float*)>& fn,
                      uint8_t* found = nullptr);

  // Rows for which pred(key, score, stamp) holds (all when pred is empty), sorted by key.
  TableRows export_rows(
      const std::function<bool(uint64_t, uint64_t, uint64_t)>& pred = nullptr) const;

  // Grows so that the table has at least `capacity` slots (never shrinks); rows are kept.
  void reserve(int64_t capacity);
  void clear();  // removes every row, keeps the capacity

  // Keys removed (erase, eviction, clear) at a step after `step`, sorted and distinct, whether
  // or not they are back: the candidates for an incremental dump's tombstones. Every removal is
  // logged with the step until forget_removals(s) drops those at or before s (call it once no
  // dump since an earlier step is wanted).
  std::vector<uint64_t> removed_since(uint64_t step) const { return removals_.since(step); }
  void forget_removals(uint64_t step) { removals_.forget(step); }

  // int64 ids: the same bits as uint64 (-1 is the reserved empty key).
  void find(const int64_t* keys, int64_t n, float* values_out, uint8_t* found) const {
    find(reinterpret_cast<const uint64_t*>(keys), n, values_out, found);
  }
  void find_or_insert(const int64_t* keys, int64_t n, float* values_out,
                      uint8_t* stored = nullptr) {
    find_or_insert(reinterpret_cast<const uint64_t*>(keys), n, values_out, stored);
  }
  void insert_or_assign(const int64_t* keys, const float* values, int64_t n) {
    insert_or_assign(reinterpret_cast<const uint64_t*>(keys), values, n);
  }
  int64_t assign(const int64_t* keys, const float* values, int64_t n) {
    return assign(reinterpret_cast<const uint64_t*>(keys), values, n);
  }
  int64_t erase(const int64_t* keys, int64_t n) {
    return erase(reinterpret_cast<const uint64_t*>(keys), n);
  }

  struct Shard;
  enum class Op : uint8_t;
  struct Batch;

 private:
  void run_batch(Batch& batch) const;
  void process_shard(int s, const std::vector<int64_t>& idx, Batch& batch) const;
  // Bounded tables: decides which new keys may be inserted and evicts room for them.
  void plan_insertions(Batch& batch, const uint64_t* pinned, int64_t num_pinned, TableRows* evicted,
                       bool admit);
  void run_inserting(Batch& batch, const uint64_t* pinned, int64_t num_pinned, TableRows* evicted,
                     bool admit);
  int shard_index(uint64_t key) const;
  void check_scores(const uint64_t* scores, const char* op) const;
  void check_keys(const uint64_t* keys, int64_t n, const char* op) const;
  void init_row(uint64_t key, float* value, float* state) const;
  void init_state(float* state) const;  // the optimizer state of a new row

  TableOptions options_;
  int64_t state_dim_ = 0;
  int64_t stride_ = 0;  // floats per row: dim + state_dim
  int shard_bits_ = 0;
  std::vector<std::unique_ptr<Shard>> shards_;
  mutable std::shared_mutex table_mutex_;  // shared: batches; exclusive: evicting, resizing
  mutable std::atomic<int64_t> size_{0};
  mutable std::atomic<int64_t> total_slots_{0};
  std::atomic<uint64_t> step_{0}, epoch_{0};
  mutable RemovalLog removals_;
};

}  // namespace genrec
