// Rows live in the shard's slot arrays (open addressing), so a row moves when its shard grows
// or when a backward-shift erase closes a gap: never keep a row pointer across calls. Tables
// with a max_capacity take the table lock exclusively for inserting batches, plan the batch's
// insertions first (admission, then eviction of the lowest (score, key) rows whose keys are
// not in the batch: the batch's keys are pinned) and only then touch the shards.
#include "embedding/dynamic_table.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <unordered_set>

#include "core/error.h"
#include "core/hash.h"
#include "core/philox.h"
#include "core/thread_pool.h"

namespace genrec {
namespace {

// Below this many keys a batch runs on the calling thread.
constexpr int64_t kParallelKeys = 4096;
constexpr int64_t kMinShardSlots = 8;

}  // namespace

std::string_view optimizer_state_name(OptimizerState state) {
  switch (state) {
    case OptimizerState::kNone:
      return "none";
    case OptimizerState::kAdam:
      return "adam";
    case OptimizerState::kAdagrad:
      return "adagrad";
  }
  return "unknown";
}

int64_t optimizer_state_dim(OptimizerState state, int64_t dim) {
  switch (state) {
    case OptimizerState::kNone:
      return 0;
    case OptimizerState::kAdam:
      return 2 * dim + 1;
    case OptimizerState::kAdagrad:
      return 1;
  }
  return 0;
}

void Initializer::fill(uint64_t key, float* row, int64_t dim) const {
  switch (kind) {
    case InitKind::kZeros:
      std::fill(row, row + dim, 0.0f);
      break;
    case InitKind::kUniform:
      for (int64_t j = 0; j < dim; ++j) {
        row[j] = scale * (2.0f * philox_uniform(seed, key, static_cast<uint64_t>(j)) - 1.0f);
      }
      break;
    case InitKind::kNormal:
      for (int64_t j = 0; j < dim; ++j) {
        const float u1 = philox_uniform(seed, key, 2 * static_cast<uint64_t>(j));
        const float u2 = philox_uniform(seed, key, 2 * static_cast<uint64_t>(j) + 1);
        const float r = std::sqrt(-2.0f * std::log(1.0f - u1));
        row[j] = scale * r * std::cos(6.2831853071795864f * u2);
      }
      break;
  }
}

void TableRows::clear() {
  keys.clear();
  values.clear();
  states.clear();
  scores.clear();
  stamps.clear();
}

void TableRows::append(const TableRows& other) {
  keys.insert(keys.end(), other.keys.begin(), other.keys.end());
  values.insert(values.end(), other.values.begin(), other.values.end());
  states.insert(states.end(), other.states.begin(), other.states.end());
  scores.insert(scores.end(), other.scores.begin(), other.scores.end());
  stamps.insert(stamps.end(), other.stamps.begin(), other.stamps.end());
}

void TableRows::append_row(const TableRows& other, int64_t i) {
  const int64_t dim = static_cast<int64_t>(other.values.size()) / other.size();
  const int64_t sd = static_cast<int64_t>(other.states.size()) / other.size();
  keys.push_back(other.keys[i]);
  values.insert(values.end(), other.values.begin() + i * dim, other.values.begin() + (i + 1) * dim);
  states.insert(states.end(), other.states.begin() + i * sd, other.states.begin() + (i + 1) * sd);
  scores.push_back(other.scores[i]);
  stamps.push_back(other.stamps[i]);
}

// One open-addressing array: slot i holds keys[i] and its row rows[i * stride ...].
struct DynamicTable::Shard {
  std::mutex mutex;
  std::vector<uint64_t> keys;
  std::vector<float> rows;
  std::vector<uint64_t> scores, stamps;
  int64_t size = 0;
  uint64_t mask = 0;

  void allocate(int64_t slots, int64_t stride) {
    keys.assign(slots, kEmptyKey);
    rows.assign(static_cast<size_t>(slots * stride), 0.0f);
    scores.assign(slots, 0);
    stamps.assign(slots, 0);
    mask = static_cast<uint64_t>(slots) - 1;
    size = 0;
  }
  int64_t slots() const { return static_cast<int64_t>(keys.size()); }
  int64_t find(uint64_t key) const {
    for (uint64_t i = mix64(key) & mask;; i = (i + 1) & mask) {
      if (keys[i] == key) return static_cast<int64_t>(i);
      if (keys[i] == kEmptyKey) return -1;
    }
  }
  // The slot for an absent key (the caller made room).
  int64_t claim(uint64_t key) {
    uint64_t i = mix64(key) & mask;
    while (keys[i] != kEmptyKey) i = (i + 1) & mask;
    keys[i] = key;
    ++size;
    return static_cast<int64_t>(i);
  }
  void move_slot(uint64_t from, uint64_t to, int64_t stride) {
    keys[to] = keys[from];
    scores[to] = scores[from];
    stamps[to] = stamps[from];
    std::memcpy(&rows[to * stride], &rows[from * stride], sizeof(float) * stride);
  }
  // Backward-shift deletion: later entries of the probe run move up to close the gap.
  void erase_slot(int64_t slot, int64_t stride) {
    uint64_t i = static_cast<uint64_t>(slot), j = i;
    for (;;) {
      j = (j + 1) & mask;
      if (keys[j] == kEmptyKey) break;
      const uint64_t home = mix64(keys[j]) & mask;
      const bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
      if (stays) continue;
      move_slot(j, i, stride);
      i = j;
    }
    keys[i] = kEmptyKey;
    --size;
  }
  void resize(int64_t new_slots, int64_t stride) {
    Shard old;
    old.keys.swap(keys);
    old.rows.swap(rows);
    old.scores.swap(scores);
    old.stamps.swap(stamps);
    allocate(new_slots, stride);
    for (size_t s = 0; s < old.keys.size(); ++s) {
      if (old.keys[s] == kEmptyKey) continue;
      const int64_t t = claim(old.keys[s]);
      scores[t] = old.scores[s];
      stamps[t] = old.stamps[s];
      std::memcpy(&rows[t * stride], &old.rows[s * stride], sizeof(float) * stride);
    }
  }
};

enum class DynamicTable::Op : uint8_t {
  kFind,
  kContains,
  kFindOrInsert,
  kInsertOrAssign,
  kAssign,
  kErase,
  kInsertRows,
  kUpdate,
};

struct DynamicTable::Batch {
  Op op;
  const uint64_t* keys = nullptr;
  int64_t n = 0;
  const float* values_in = nullptr;
  const float* states_in = nullptr;
  const uint64_t* scores_in = nullptr;
  const uint64_t* stamps_in = nullptr;
  float* values_out = nullptr;
  float* states_out = nullptr;
  uint64_t* scores_out = nullptr;
  uint64_t* stamps_out = nullptr;
  uint8_t* mask_out = nullptr;
  const uint8_t* may_insert = nullptr;  // planned insertions of bounded tables
  std::vector<uint8_t> may_storage;
  const std::function<void(int64_t, float*, float*)>* fn = nullptr;
  uint64_t step = 0, epoch = 0;
  std::atomic<int64_t> count{0};
  std::atomic<int64_t> slots_added{0};
};

DynamicTable::DynamicTable(const TableOptions& options) : options_(options) {
  GENREC_CHECK(options.dim > 0, "dynamic table: dim must be positive, got {}", options.dim);
  GENREC_CHECK(options.num_shards >= 1 && options.num_shards <= 4096 &&
                   std::has_single_bit(static_cast<unsigned>(options.num_shards)),
               "dynamic table: num_shards must be a power of two in [1, 4096], got {}",
               options.num_shards);
  GENREC_CHECK(options.max_load_factor > 0.0 && options.max_load_factor <= 0.95,
               "dynamic table: max_load_factor must be in (0, 0.95], got {}",
               options.max_load_factor);
  GENREC_CHECK(options.initial_capacity >= 0 && options.max_capacity >= 0,
               "dynamic table: capacities must be non-negative (initial {}, max {})",
               options.initial_capacity, options.max_capacity);
  GENREC_CHECK(options.initializer.scale >= 0.0f, "dynamic table: initializer scale {} < 0",
               options.initializer.scale);
  state_dim_ = optimizer_state_dim(options.optimizer, options.dim);
  stride_ = options.dim + state_dim_;
  shard_bits_ = std::countr_zero(static_cast<unsigned>(options.num_shards));
  const int64_t per_shard = std::max<int64_t>(
      kMinShardSlots,
      static_cast<int64_t>(std::bit_ceil(static_cast<uint64_t>(
          (options.initial_capacity + options.num_shards - 1) / options.num_shards))));
  for (int s = 0; s < options.num_shards; ++s) {
    shards_.push_back(std::make_unique<Shard>());
    shards_.back()->allocate(per_shard, stride_);
  }
  total_slots_ = per_shard * options.num_shards;
}

DynamicTable::~DynamicTable() = default;

int64_t DynamicTable::capacity() const {
  return total_slots_.load();
}

void DynamicTable::check_keys(const uint64_t* keys, int64_t n, const char* op) const {
  GENREC_CHECK(n >= 0, "dynamic table {}: negative batch size {}", op, n);
  for (int64_t i = 0; i < n; ++i) {
    if (keys[i] == kEmptyKey) {
      fail(
          "dynamic table {}: key {} of the batch is the reserved empty key (uint64 max, int64 "
          "-1)",
          op, i);
    }
  }
}

void DynamicTable::init_row(uint64_t key, float* value, float* state) const {
  options_.initializer.fill(key, value, options_.dim);
  init_state(state);
}

void DynamicTable::init_state(float* state) const {
  const float s0 = options_.optimizer == OptimizerState::kAdagrad ? options_.initial_state : 0.0f;
  std::fill(state, state + state_dim_, s0);
}

void DynamicTable::process_shard(int s, const std::vector<int64_t>& idx, Batch& b) const {
  Shard& shard = *shards_[s];
  std::lock_guard<std::mutex> lock(shard.mutex);
  const int64_t dim = options_.dim, sd = state_dim_, stride = stride_;
  const EvictionPolicy policy = options_.eviction;
  int64_t count = 0, slots_added = 0;
  auto custom = [&](int64_t i) { return b.scores_in != nullptr ? b.scores_in[i] : 0; };
  // A slot for a new key, growing the shard past the load factor.
  auto claim = [&](uint64_t key) {
    while (static_cast<double>(shard.size + 1) >
           options_.max_load_factor * static_cast<double>(shard.slots())) {
      slots_added += shard.slots();
      shard.resize(2 * shard.slots(), stride);
    }
    return shard.claim(key);
  };
  for (int64_t i : idx) {
    const uint64_t key = b.keys[i];
    int64_t slot = shard.find(key);
    switch (b.op) {
      case Op::kContains:
        b.mask_out[i] = slot >= 0;
        break;
      case Op::kFind:
        b.mask_out[i] = slot >= 0;
        if (slot < 0) break;
        std::memcpy(b.values_out + i * dim, &shard.rows[slot * stride], sizeof(float) * dim);
        if (b.states_out != nullptr && sd > 0) {
          std::memcpy(b.states_out + i * sd, &shard.rows[slot * stride + dim], sizeof(float) * sd);
        }
        if (b.scores_out != nullptr) b.scores_out[i] = shard.scores[slot];
        if (b.stamps_out != nullptr) b.stamps_out[i] = shard.stamps[slot];
        break;
      case Op::kFindOrInsert: {
        const bool is_new = slot < 0;
        if (is_new) {
          bool admit = true;
          if (b.may_insert != nullptr) {
            admit = b.may_insert[i] != 0;
          } else if (options_.admission) {
            admit = options_.admission->record(key);
          }
          if (!admit) {
            options_.initializer.fill(key, b.values_out + i * dim, dim);
            if (b.mask_out != nullptr) b.mask_out[i] = 0;
            break;
          }
          slot = claim(key);
          init_row(key, &shard.rows[slot * stride], &shard.rows[slot * stride + dim]);
          shard.stamps[slot] = b.step;
          ++count;
        }
        shard.scores[slot] =
            score_after_access(policy, is_new, shard.scores[slot], b.step, b.epoch, custom(i));
        std::memcpy(b.values_out + i * dim, &shard.rows[slot * stride], sizeof(float) * dim);
        if (b.mask_out != nullptr) b.mask_out[i] = 1;
        break;
      }
      case Op::kInsertOrAssign:
      case Op::kInsertRows: {
        const bool is_new = slot < 0;
        if (is_new) {
          if (b.may_insert != nullptr && b.may_insert[i] == 0) {
            if (b.mask_out != nullptr) b.mask_out[i] = 0;
            break;
          }
          slot = claim(key);
          // The values come from the call; only the state starts at its initial value (rows
          // get theirs below).
          if (b.op == Op::kInsertOrAssign) init_state(&shard.rows[slot * stride + dim]);
          ++count;
        }
        float* row = &shard.rows[slot * stride];
        std::memcpy(row, b.values_in + i * dim, sizeof(float) * dim);
        if (b.op == Op::kInsertRows) {
          if (sd > 0) std::memcpy(row + dim, b.states_in + i * sd, sizeof(float) * sd);
          shard.scores[slot] = b.scores_in[i];
          shard.stamps[slot] = b.stamps_in[i];
        } else {
          shard.scores[slot] =
              score_after_access(policy, is_new, shard.scores[slot], b.step, b.epoch, custom(i));
          shard.stamps[slot] = b.step;
        }
        if (b.mask_out != nullptr) b.mask_out[i] = 1;
        break;
      }
      case Op::kAssign:
        if (slot < 0) break;
        std::memcpy(&shard.rows[slot * stride], b.values_in + i * dim, sizeof(float) * dim);
        shard.scores[slot] =
            score_after_access(policy, false, shard.scores[slot], b.step, b.epoch, custom(i));
        shard.stamps[slot] = b.step;
        ++count;
        break;
      case Op::kErase:
        if (slot < 0) break;
        shard.erase_slot(slot, stride);
        if (options_.log_removals) removals_.append(key, b.step);
        ++count;
        break;
      case Op::kUpdate:
        if (b.mask_out != nullptr) b.mask_out[i] = slot >= 0;
        if (slot < 0) break;
        (*b.fn)(i, &shard.rows[slot * stride], &shard.rows[slot * stride + dim]);
        shard.stamps[slot] = b.step;
        ++count;
        break;
    }
  }
  b.count += count;
  b.slots_added += slots_added;
}

void DynamicTable::run_batch(Batch& b) const {
  b.step = step_.load();
  b.epoch = epoch_.load();
  const int num_shards = options_.num_shards;
  // Stable grouping by shard: each shard sees its keys in batch order.
  std::vector<std::vector<int64_t>> groups(num_shards);
  if (shard_bits_ == 0) {
    groups[0].resize(b.n);
    for (int64_t i = 0; i < b.n; ++i) groups[0][i] = i;
  } else {
    std::vector<uint16_t> shard_of(b.n);
    std::vector<int64_t> counts(num_shards, 0);
    for (int64_t i = 0; i < b.n; ++i) {
      shard_of[i] = static_cast<uint16_t>(shard_index(b.keys[i]));
      ++counts[shard_of[i]];
    }
    for (int s = 0; s < num_shards; ++s) groups[s].reserve(counts[s]);
    for (int64_t i = 0; i < b.n; ++i) groups[shard_of[i]].push_back(i);
  }
  auto work = [&](int64_t begin, int64_t end, int) {
    for (int64_t s = begin; s < end; ++s) {
      if (!groups[s].empty()) process_shard(static_cast<int>(s), groups[s], b);
    }
  };
  if (b.n < kParallelKeys) {
    work(0, num_shards, 0);
  } else {
    parallel_for(num_shards, work);
  }
  total_slots_ += b.slots_added.load();
}

int DynamicTable::shard_index(uint64_t key) const {
  return shard_bits_ == 0 ? 0 : static_cast<int>(mix64(key) >> (64 - shard_bits_));
}

void DynamicTable::plan_insertions(Batch& b, const uint64_t* pinned, int64_t num_pinned,
                                   TableRows* evicted, bool admit) {
  // Called with the table lock held exclusively: shards are read without their mutexes.
  auto present = [&](uint64_t key) { return shards_[shard_index(key)]->find(key) >= 0; };
  b.may_storage.assign(b.n, 0);
  std::unordered_set<uint64_t> fresh;
  std::vector<int64_t> inserting;  // the occurrence that inserts each new key, in batch order
  for (int64_t i = 0; i < b.n; ++i) {
    const uint64_t key = b.keys[i];
    if (fresh.count(key) != 0 || present(key)) continue;
    const bool ok = admit && options_.admission ? options_.admission->record(key) : true;
    if (!ok) continue;
    fresh.insert(key);
    inserting.push_back(i);
    b.may_storage[i] = 1;
  }
  b.may_insert = b.may_storage.data();
  const int64_t need =
      size_.load() + static_cast<int64_t>(inserting.size()) - options_.max_capacity;
  if (need <= 0) return;
  // The batch's keys (and the caller's pinned keys) are pinned: never victims of this call.
  std::unordered_set<uint64_t> pin(b.keys, b.keys + b.n);
  if (pinned != nullptr) pin.insert(pinned, pinned + num_pinned);
  std::vector<EvictionCandidate> candidates;
  candidates.reserve(size_.load());
  for (int s = 0; s < options_.num_shards; ++s) {
    const Shard& shard = *shards_[s];
    for (int64_t t = 0; t < shard.slots(); ++t) {
      const uint64_t key = shard.keys[t];
      if (key == kEmptyKey || pin.count(key) != 0) continue;
      candidates.push_back({shard.scores[t], key, int64_t{s} << 40 | t});
    }
  }
  const int64_t victims = select_victims(candidates, need);
  const int64_t dim = options_.dim, sd = state_dim_;
  std::vector<uint64_t> removed;  // for the removal log, in one append
  for (int64_t v = 0; v < victims; ++v) {
    const uint64_t key = candidates[v].key;
    Shard& shard = *shards_[shard_index(key)];
    const int64_t slot = shard.find(key);  // erases shift rows: look each victim up again
    if (evicted != nullptr) {
      const float* row = &shard.rows[slot * stride_];
      evicted->keys.push_back(key);
      evicted->values.insert(evicted->values.end(), row, row + dim);
      evicted->states.insert(evicted->states.end(), row + dim, row + dim + sd);
      evicted->scores.push_back(shard.scores[slot]);
      evicted->stamps.push_back(shard.stamps[slot]);
    }
    shard.erase_slot(slot, stride_);
    if (options_.log_removals) removed.push_back(key);
    --size_;
  }
  removals_.append(removed.data(), static_cast<int64_t>(removed.size()), step_.load());
  // Not enough unpinned rows: the last new keys of the batch are not stored.
  for (int64_t k = static_cast<int64_t>(inserting.size()) - (need - victims);
       k < static_cast<int64_t>(inserting.size()); ++k) {
    b.may_storage[inserting[k]] = 0;
  }
}

void DynamicTable::find(const uint64_t* keys, int64_t n, float* values_out, uint8_t* found,
                        float* states_out, uint64_t* scores_out, uint64_t* stamps_out) const {
  GENREC_CHECK(n >= 0, "dynamic table find: negative batch size {}", n);
  std::shared_lock<std::shared_mutex> lock(table_mutex_);
  Batch b;
  b.op = Op::kFind;
  b.keys = keys;
  b.n = n;
  b.values_out = values_out;
  b.mask_out = found;
  b.states_out = states_out;
  b.scores_out = scores_out;
  b.stamps_out = stamps_out;
  run_batch(b);
}

void DynamicTable::contains(const uint64_t* keys, int64_t n, uint8_t* out) const {
  GENREC_CHECK(n >= 0, "dynamic table contains: negative batch size {}", n);
  std::shared_lock<std::shared_mutex> lock(table_mutex_);
  Batch b;
  b.op = Op::kContains;
  b.keys = keys;
  b.n = n;
  b.mask_out = out;
  run_batch(b);
}

bool DynamicTable::contains(uint64_t key) const {
  uint8_t out = 0;
  contains(&key, 1, &out);
  return out != 0;
}

void DynamicTable::check_scores(const uint64_t* scores, const char* op) const {
  if (options_.eviction == EvictionPolicy::kCustom) {
    GENREC_CHECK(scores != nullptr, "dynamic table {}: the custom eviction policy needs scores",
                 op);
  } else {
    GENREC_CHECK(scores == nullptr,
                 "dynamic table {}: scores were given but the eviction policy is {}", op,
                 eviction_policy_name(options_.eviction));
  }
}

// Runs an inserting batch: shared lock when unbounded, else exclusive with planning.
void DynamicTable::run_inserting(Batch& b, const uint64_t* pinned, int64_t num_pinned,
                                 TableRows* evicted, bool admit) {
  if (options_.max_capacity == 0) {
    std::shared_lock<std::shared_mutex> lock(table_mutex_);
    run_batch(b);
    size_ += b.count.load();
  } else {
    std::unique_lock<std::shared_mutex> lock(table_mutex_);
    plan_insertions(b, pinned, num_pinned, evicted, admit);
    run_batch(b);
    size_ += b.count.load();
  }
}

void DynamicTable::find_or_insert(const uint64_t* keys, int64_t n, float* values_out,
                                  uint8_t* stored, const uint64_t* scores, TableRows* evicted) {
  find_or_insert_pinned(keys, n, values_out, stored, scores, evicted, nullptr, 0);
}

void DynamicTable::find_or_insert_pinned(const uint64_t* keys, int64_t n, float* values_out,
                                         uint8_t* stored, const uint64_t* scores,
                                         TableRows* evicted, const uint64_t* pinned,
                                         int64_t num_pinned) {
  check_keys(keys, n, "find_or_insert");
  check_scores(scores, "find_or_insert");
  Batch b;
  b.op = Op::kFindOrInsert;
  b.keys = keys;
  b.n = n;
  b.values_out = values_out;
  b.mask_out = stored;
  b.scores_in = scores;
  run_inserting(b, pinned, num_pinned, evicted, true);
}

void DynamicTable::insert_or_assign(const uint64_t* keys, const float* values, int64_t n,
                                    const uint64_t* scores, TableRows* evicted, uint8_t* stored) {
  check_keys(keys, n, "insert_or_assign");
  check_scores(scores, "insert_or_assign");
  Batch b;
  b.op = Op::kInsertOrAssign;
  b.keys = keys;
  b.n = n;
  b.values_in = values;
  b.scores_in = scores;
  b.mask_out = stored;
  run_inserting(b, nullptr, 0, evicted, false);
}

void DynamicTable::insert_rows(const TableRows& rows, TableRows* evicted, const uint64_t* pinned,
                               int64_t num_pinned, uint8_t* stored) {
  const int64_t n = rows.size();
  check_keys(rows.keys.data(), n, "insert_rows");
  GENREC_CHECK(static_cast<int64_t>(rows.values.size()) == n * options_.dim &&
                   static_cast<int64_t>(rows.states.size()) == n * state_dim_ &&
                   static_cast<int64_t>(rows.scores.size()) == n &&
                   static_cast<int64_t>(rows.stamps.size()) == n,
               "dynamic table insert_rows: {} keys need {} values, {} states, {} scores and "
               "stamps; got {}, {}, {}, {}",
               n, n * options_.dim, n * state_dim_, n, rows.values.size(), rows.states.size(),
               rows.scores.size(), rows.stamps.size());
  Batch b;
  b.op = Op::kInsertRows;
  b.keys = rows.keys.data();
  b.n = n;
  b.values_in = rows.values.data();
  b.states_in = rows.states.data();
  b.scores_in = rows.scores.data();
  b.stamps_in = rows.stamps.data();
  b.mask_out = stored;
  run_inserting(b, pinned, num_pinned, evicted, false);
}

int64_t DynamicTable::assign(const uint64_t* keys, const float* values, int64_t n,
                             const uint64_t* scores) {
  GENREC_CHECK(n >= 0, "dynamic table assign: negative batch size {}", n);
  check_scores(scores, "assign");
  std::shared_lock<std::shared_mutex> lock(table_mutex_);
  Batch b;
  b.op = Op::kAssign;
  b.keys = keys;
  b.n = n;
  b.values_in = values;
  b.scores_in = scores;
  run_batch(b);
  return b.count.load();
}

int64_t DynamicTable::erase(const uint64_t* keys, int64_t n) {
  GENREC_CHECK(n >= 0, "dynamic table erase: negative batch size {}", n);
  std::shared_lock<std::shared_mutex> lock(table_mutex_);
  Batch b;
  b.op = Op::kErase;
  b.keys = keys;
  b.n = n;
  b.step = step_.load();
  run_batch(b);
  size_ -= b.count.load();
  return b.count.load();
}

int64_t DynamicTable::update_rows(const uint64_t* keys, int64_t n,
                                  const std::function<void(int64_t, float*, float*)>& fn,
                                  uint8_t* found) {
  GENREC_CHECK(n >= 0, "dynamic table update_rows: negative batch size {}", n);
  std::shared_lock<std::shared_mutex> lock(table_mutex_);
  Batch b;
  b.op = Op::kUpdate;
  b.keys = keys;
  b.n = n;
  b.fn = &fn;
  b.mask_out = found;
  run_batch(b);
  return b.count.load();
}

TableRows DynamicTable::export_rows(
    const std::function<bool(uint64_t, uint64_t, uint64_t)>& pred) const {
  std::unique_lock<std::shared_mutex> lock(table_mutex_);
  struct Ref {
    uint64_t key;
    int shard;
    int64_t slot;
  };
  std::vector<Ref> refs;
  refs.reserve(size_.load());
  for (int s = 0; s < options_.num_shards; ++s) {
    const Shard& shard = *shards_[s];
    for (int64_t t = 0; t < shard.slots(); ++t) {
      const uint64_t key = shard.keys[t];
      if (key == kEmptyKey) continue;
      if (pred && !pred(key, shard.scores[t], shard.stamps[t])) continue;
      refs.push_back({key, s, t});
    }
  }
  std::sort(refs.begin(), refs.end(), [](const Ref& a, const Ref& b) { return a.key < b.key; });
  TableRows out;
  const int64_t n = static_cast<int64_t>(refs.size()), dim = options_.dim, sd = state_dim_;
  out.keys.resize(n);
  out.values.resize(n * dim);
  out.states.resize(n * sd);
  out.scores.resize(n);
  out.stamps.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    const Shard& shard = *shards_[refs[i].shard];
    const int64_t t = refs[i].slot;
    const float* row = &shard.rows[t * stride_];
    out.keys[i] = refs[i].key;
    std::memcpy(&out.values[i * dim], row, sizeof(float) * dim);
    if (sd > 0) std::memcpy(&out.states[i * sd], row + dim, sizeof(float) * sd);
    out.scores[i] = shard.scores[t];
    out.stamps[i] = shard.stamps[t];
  }
  return out;
}

void DynamicTable::reserve(int64_t capacity) {
  GENREC_CHECK(capacity >= 0, "dynamic table reserve: negative capacity {}", capacity);
  std::unique_lock<std::shared_mutex> lock(table_mutex_);
  const int64_t per_shard = static_cast<int64_t>(std::bit_ceil(
      static_cast<uint64_t>((capacity + options_.num_shards - 1) / options_.num_shards)));
  int64_t total = 0;
  for (auto& shard : shards_) {
    if (shard->slots() < per_shard) shard->resize(per_shard, stride_);
    total += shard->slots();
  }
  total_slots_ = total;
}

void DynamicTable::clear() {
  std::unique_lock<std::shared_mutex> lock(table_mutex_);
  std::vector<uint64_t> removed;  // for the removal log, in one append
  for (auto& shard : shards_) {
    for (uint64_t& key : shard->keys) {
      if (key != kEmptyKey && options_.log_removals) removed.push_back(key);
      key = kEmptyKey;
    }
    shard->size = 0;
  }
  removals_.append(removed.data(), static_cast<int64_t>(removed.size()), step_.load());
  size_ = 0;
}

}  // namespace genrec
