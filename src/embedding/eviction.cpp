// Eviction order is (score, key) ascending: keys break ties so that rows touched in the same
// step are evicted in a deterministic order, the same on every platform.
#include "embedding/eviction.h"

#include <algorithm>
#include <limits>

#include "core/error.h"

namespace genrec {
namespace {

constexpr uint64_t kLow32 = 0xFFFFFFFFull;

bool victim_less(const EvictionCandidate& a, const EvictionCandidate& b) {
  return a.score != b.score ? a.score < b.score : a.key < b.key;
}

}  // namespace

std::string_view eviction_policy_name(EvictionPolicy policy) {
  switch (policy) {
    case EvictionPolicy::kLru:
      return "lru";
    case EvictionPolicy::kLfu:
      return "lfu";
    case EvictionPolicy::kEpochLru:
      return "epoch_lru";
    case EvictionPolicy::kEpochLfu:
      return "epoch_lfu";
    case EvictionPolicy::kCustom:
      return "custom";
  }
  return "unknown";
}

EvictionPolicy parse_eviction_policy(std::string_view name) {
  for (auto p : {EvictionPolicy::kLru, EvictionPolicy::kLfu, EvictionPolicy::kEpochLru,
                 EvictionPolicy::kEpochLfu, EvictionPolicy::kCustom}) {
    if (eviction_policy_name(p) == name) return p;
  }
  fail("unknown eviction policy '{}' (expected lru, lfu, epoch_lru, epoch_lfu or custom)", name);
}

uint64_t score_after_access(EvictionPolicy policy, bool is_new, uint64_t old_score, uint64_t step,
                            uint64_t epoch, uint64_t custom) {
  switch (policy) {
    case EvictionPolicy::kLru:
      return step;
    case EvictionPolicy::kLfu:
      if (is_new) return 1;
      return old_score == std::numeric_limits<uint64_t>::max() ? old_score : old_score + 1;
    case EvictionPolicy::kEpochLru:
      return (epoch << 32) | (step & kLow32);
    case EvictionPolicy::kEpochLfu: {
      uint64_t count = is_new ? 1 : std::min<uint64_t>((old_score & kLow32) + 1, kLow32);
      return (epoch << 32) | count;
    }
    case EvictionPolicy::kCustom:
      return custom;
  }
  return 0;
}

int64_t select_victims(std::vector<EvictionCandidate>& candidates, int64_t count) {
  const int64_t k =
      std::min<int64_t>(std::max<int64_t>(count, 0), static_cast<int64_t>(candidates.size()));
  if (k == 0) return 0;
  if (k < static_cast<int64_t>(candidates.size())) {
    std::nth_element(candidates.begin(), candidates.begin() + (k - 1), candidates.end(),
                     victim_less);
  }
  std::sort(candidates.begin(), candidates.begin() + k, victim_less);
  return k;
}

}  // namespace genrec
