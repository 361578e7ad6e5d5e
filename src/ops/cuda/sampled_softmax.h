// CUDA sampled softmax loss (fp32 only: the loss and its logits stay in fp32). Same maths and
// argument conventions as genrec::cpu::sampled_softmax_* (ops/sampled_softmax.h); all array
// pointers are device pointers. The logits and gradient products run on cuBLASLt in fp32 through
// gemm_ctx (ops/cuda/gemm.h), which must belong to the stream's device.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "ops/cuda/gemm.h"

namespace genrec::cuda {

// Writes probs [N, K + 1] and the mean loss to the device float *loss, without synchronising.
void sampled_softmax_forward_async(GemmContext& gemm_ctx, float* loss, float* probs,
                                   const float* query, const float* positive,
                                   const int64_t* positive_ids, const float* negatives,
                                   const int64_t* negative_ids, int64_t N, int64_t K, int64_t D,
                                   float temperature, cudaStream_t stream);

// As the CPU op: returns the mean loss on the host (synchronises the stream for that copy).
float sampled_softmax_forward(GemmContext& gemm_ctx, float* probs, const float* query,
                              const float* positive, const int64_t* positive_ids,
                              const float* negatives, const int64_t* negative_ids, int64_t N,
                              int64_t K, int64_t D, float temperature, cudaStream_t stream);

// d_query [N, D], d_positive [N, D] and d_negatives [K, D] written.
void sampled_softmax_backward(GemmContext& gemm_ctx, float* d_query, float* d_positive,
                              float* d_negatives, const float* probs, const float* query,
                              const float* positive, const float* negatives, int64_t N, int64_t K,
                              int64_t D, float temperature, cudaStream_t stream);

}  // namespace genrec::cuda
