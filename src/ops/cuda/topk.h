// CUDA top-k selection and target ranks over rows of scores; same semantics as
// genrec::cpu::topk / rank_of_target (ops/topk.h), device pointers, one block per row.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace genrec::cuda {

// Largest supported k.
constexpr int64_t kMaxTopk = 1024;

// For each of R rows of n scores: the k highest, best first (ties by lower index, NaN below
// every number), as indices[R, k] and values[R, k]. Requires 0 < k <= min(n, kMaxTopk) and
// n < 2^32.
void topk(int64_t* indices, float* values, const float* scores, int64_t R, int64_t n, int64_t k,
          cudaStream_t stream);

// For each row r: the number of scores strictly greater than scores[r, target[r]]. The targets
// live on the device, so an out-of-range target cannot throw as on the CPU: its rank is -1.
void rank_of_target(int64_t* ranks, const float* scores, const int64_t* target, int64_t R,
                    int64_t n, cudaStream_t stream);

}  // namespace genrec::cuda
