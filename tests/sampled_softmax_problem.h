// The sampled-softmax problems shared by the CPU and the CUDA op tests (N rows against K
// shared negatives, some equal to a row's positive and so masked), from seeded Philox streams,
// and the CPU op's forward on one.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/philox.h"
#include "op_test_util.h"
#include "ops/sampled_softmax.h"

namespace genrec::test {

struct SoftmaxProblem {
  int64_t N, K, D;
  float temperature;
  std::vector<float> query, positive, negatives;
  std::vector<int64_t> positive_ids, negative_ids;
};

// Rows of norm ~scale; ids drawn from a small range so that some negatives equal a row's
// positive, and row 0's positive id is forced to appear (twice) among the negatives. N, K
// and D may be 0.
inline SoftmaxProblem make_softmax_problem(int64_t N, int64_t K, int64_t D, float temperature,
                                           float scale, uint64_t seed) {
  SoftmaxProblem p{N, K, D, temperature, {}, {}, {}, {}, {}};
  const float s = scale / std::sqrt(static_cast<float>(std::max<int64_t>(D, 1)));
  p.query = random_normal(N * D, seed, s);
  p.positive = random_normal(N * D, seed + 1, s);
  p.negatives = random_normal(K * D, seed + 2, s);
  Philox rng(seed + 3);
  const uint64_t ids = static_cast<uint64_t>(std::max<int64_t>(3 * K, 1));
  for (int64_t n = 0; n < N; ++n) p.positive_ids.push_back(static_cast<int64_t>(rng.below(ids)));
  for (int64_t k = 0; k < K; ++k) p.negative_ids.push_back(static_cast<int64_t>(rng.below(ids)));
  if (K >= 3 && N >= 1) p.negative_ids[1] = p.negative_ids[K - 1] = p.positive_ids[0];
  return p;
}

// The CPU op's forward: probs [N, K + 1] (poisoned first, then written); returns the loss.
inline float cpu_softmax_forward(const SoftmaxProblem& p, std::vector<float>& probs) {
  probs.assign(p.N * (p.K + 1), 0.0f);
  poison(probs);
  return cpu::sampled_softmax_forward(probs.data(), p.query.data(), p.positive.data(),
                                      p.positive_ids.data(), p.negatives.data(),
                                      p.negative_ids.data(), p.N, p.K, p.D, p.temperature);
}

}  // namespace genrec::test
