// Dense matrix products and the linear layer built on them. Row-major everywhere.
// Convention (llm.c): activation gradients are written (=), parameter gradients accumulate (+=).
#pragma once

#include <cstdint>

namespace genrec::cpu {

// C[M,N] = alpha * op(A) * op(B) + beta * C, op(X) = X or Xᵀ; lda/ldb/ldc are row strides.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// out[T,OC] = in[T,IC] · weight[IC,OC] + bias[OC] (bias may be null).
void linear_forward(float* out, const float* in, const float* weight, const float* bias, int64_t T,
                    int64_t IC, int64_t OC);

// d_in = d_out · weightᵀ (written; skipped when d_in is null), d_weight += inᵀ · d_out,
// d_bias += column sums of d_out (skipped when null).
void linear_backward(float* d_in, float* d_weight, float* d_bias, const float* d_out,
                     const float* in, const float* weight, int64_t T, int64_t IC, int64_t OC);

}  // namespace genrec::cpu
