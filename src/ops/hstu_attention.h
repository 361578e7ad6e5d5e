// HSTU pointwise attention on jagged sequences (Zhai et al. 2024):
//   S_ij = SiLU(alpha * q_i·k_j + pos[min(i-j, P-1)] + time[bucket(t_i - t_j)]) * inv_n
//   out_i = Σ_{j ≤ i} S_ij v_j          (causal, within one sequence, per head)
// The relative bias is shared by all heads (as in the reference). No N×N matrix is stored:
// the backward recomputes the scores.
#pragma once

#include <cmath>
#include <cstdint>

namespace genrec::cpu {

struct HstuAttentionShape {
  int64_t num_heads = 1;
  int64_t dim_qk = 0;  // per head
  int64_t dim_v = 0;   // per head
  float alpha = 1.0f;  // scale of q·k
  float inv_n = 1.0f;  // 1 / N normalisation of the SiLU scores
  // Row strides (elements per token) of q, k and v: they may be column slices of one buffer.
  int64_t ld_q = 0, ld_k = 0, ld_v = 0;
};

struct HstuRelativeBias {
  const float* position = nullptr;  // [num_positions] or null; index min(i - j, P - 1)
  int64_t num_positions = 0;
  const float* time = nullptr;  // [num_time_buckets] or null; needs timestamps
  int64_t num_time_buckets = 0;
  const int64_t* timestamps = nullptr;  // [T], seconds
};

// Log-spaced time bucket of a difference in seconds, as the HSTU reference:
// floor(ln(max(|dt|, 1)) / 0.301), capped at num_buckets - 1.
inline int64_t hstu_time_bucket(int64_t dt, int64_t num_buckets) {
  double a = static_cast<double>(dt < 0 ? -dt : dt);
  int64_t bucket = static_cast<int64_t>(std::log(a < 1.0 ? 1.0 : a) / 0.301);
  return bucket < num_buckets - 1 ? bucket : num_buckets - 1;
}

// q [T, ld_q] (head h at columns h*dim_qk), k likewise, v [T, ld_v] (head h at h*dim_v);
// out [T, num_heads * dim_v] contiguous, written. offsets: i64 [batch_size + 1].
void hstu_attention_forward(float* out, const float* q, const float* k, const float* v,
                            const int64_t* offsets, int64_t batch_size,
                            const HstuAttentionShape& shape, const HstuRelativeBias& bias);

// d_q, d_k, d_v are written with the strides of q, k, v; d_position_bias and d_time_bias
// accumulate (+=) and are skipped when null.
void hstu_attention_backward(float* d_q, float* d_k, float* d_v, float* d_position_bias,
                             float* d_time_bias, const float* d_out, const float* q, const float* k,
                             const float* v, const int64_t* offsets, int64_t batch_size,
                             const HstuAttentionShape& shape, const HstuRelativeBias& bias);

}  // namespace genrec::cpu
