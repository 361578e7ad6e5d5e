// Sampled softmax loss for next-item prediction with one pool of negatives shared by every
// row of the batch (uniform samples and/or in-batch items), so the logits are one GEMM.
// Row n: s_0 = q_n·p_n / τ, s_k = q_n·e_k / τ for negatives k whose id differs from the
// positive id (a negative equal to the positive is masked out); loss_n = logsumexp(s) - s_0.
// The op returns the mean loss over the N rows.
#pragma once

#include <cstdint>

namespace genrec::cpu {

// query [N, D], positive [N, D], negatives [K, D]. probs [N, K + 1] receives the softmax
// (column 0 = positive, masked negatives 0) and is what the backward needs.
float sampled_softmax_forward(float* probs, const float* query, const float* positive,
                              const int64_t* positive_ids, const float* negatives,
                              const int64_t* negative_ids, int64_t N, int64_t K, int64_t D,
                              float temperature);

// Gradients of the mean loss: d_query [N, D] and d_positive [N, D] written, d_negatives
// [K, D] written.
void sampled_softmax_backward(float* d_query, float* d_positive, float* d_negatives,
                              const float* probs, const float* query, const float* positive,
                              const float* negatives, int64_t N, int64_t K, int64_t D,
                              float temperature);

}  // namespace genrec::cpu
