// Top-k selection over rows of scores, for recommendation and full-ranking evaluation.
#pragma once

#include <cstdint>

namespace genrec::cpu {

// For each of R rows of n scores: the k highest, best first (ties by lower index), as
// indices[R, k] and values[R, k]. Requires 0 < k <= n.
void topk(int64_t* indices, float* values, const float* scores, int64_t R, int64_t n, int64_t k);

// For each row r: the number of scores strictly greater than scores[r, target[r]]
// (0 = the target ranks first).
void rank_of_target(int64_t* ranks, const float* scores, const int64_t* target, int64_t R,
                    int64_t n);

}  // namespace genrec::cpu
