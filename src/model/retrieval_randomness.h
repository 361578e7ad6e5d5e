// The randomness of a retrieval training step, shared by every backend so that one step on
// the CPU and on a GPU draws the same dropout masks and negatives: a per-step Philox key
// mixed from (seed, step), fixed Philox streams per use, and the negative pool drawn on the host.
#pragma once

#include <cstdint>
#include <vector>

#include "core/hash.h"
#include "core/philox.h"
#include "model/retrieval_model.h"

namespace genrec {

constexpr uint64_t kInputDropoutStream = 1u << 20;  // block l uses stream l
constexpr uint64_t kNegativeStream = 2u << 20;

// Decorrelates (seed, step) into one Philox key.
inline uint64_t step_key(uint64_t seed, int64_t step) {
  return mix64(seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(step + 1));
}

// num_negatives uniform items in 1..V, then (optionally) the batch's own targets.
inline std::vector<int64_t> sample_negatives(const RetrievalConfig& config, const TokenBatch& batch,
                                             uint64_t key) {
  std::vector<int64_t> negatives;
  Philox rng(key, kNegativeStream);
  for (int64_t k = 0; k < config.num_negatives; ++k) {
    negatives.push_back(1 + static_cast<int64_t>(rng.below(config.num_items)));
  }
  if (config.in_batch_negatives) {
    negatives.insert(negatives.end(), batch.targets.begin(), batch.targets.end());
  }
  return negatives;
}

}  // namespace genrec
