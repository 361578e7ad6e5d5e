// LayerNorm over the last axis: out = (x - mean) * rstd * weight + bias.
// weight and bias may be null (no affine, as the HSTU reference normalises attention output).
#pragma once

#include <cstdint>

namespace genrec::cpu {

// Saves mean[T] and rstd[T] for the backward.
void layer_norm_forward(float* out, float* mean, float* rstd, const float* in, const float* weight,
                        const float* bias, int64_t T, int64_t C, float eps);

// d_in written; d_weight and d_bias accumulate (+=) and are skipped when null.
void layer_norm_backward(float* d_in, float* d_weight, float* d_bias, const float* d_out,
                         const float* in, const float* weight, const float* mean, const float* rstd,
                         int64_t T, int64_t C);

}  // namespace genrec::cpu
