// Eviction scores of the dynamic table. Every row carries one uint64 score that the policy
// rewrites on each access; a full table evicts the rows with the lowest (score, key) first, so
// the victim order is a total order that a test model (or the CUDA table) can reproduce exactly.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace genrec {

enum class EvictionPolicy {
  kLru,       // score = table step of the last access
  kLfu,       // score = number of accesses (saturating)
  kEpochLru,  // score = epoch << 32 | low 32 bits of the step of the last access
  kEpochLfu,  // score = epoch << 32 | accesses (low 32 bits, saturating)
  kCustom,    // score = the value the caller passes with the key
};

std::string_view eviction_policy_name(EvictionPolicy policy);
EvictionPolicy parse_eviction_policy(std::string_view name);  // "lru", "lfu", ... ; throws

// The score of a row after one access under `policy`. `is_new`: the row is being inserted
// (old_score is ignored). `custom` is used by kCustom only.
uint64_t score_after_access(EvictionPolicy policy, bool is_new, uint64_t old_score, uint64_t step,
                            uint64_t epoch, uint64_t custom);

struct EvictionCandidate {
  uint64_t score = 0;
  uint64_t key = 0;
  int64_t location = 0;  // owner-defined (shard and slot)
};

// Reorders `candidates` so that the `count` lowest by (score, key) come first, in ascending
// (score, key) order; returns min(count, candidates.size()).
int64_t select_victims(std::vector<EvictionCandidate>& candidates, int64_t count);

}  // namespace genrec
