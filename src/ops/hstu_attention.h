// HSTU pointwise attention on jagged sequences (Zhai et al. 2024):
//   S_ij = SiLU(alpha * q_i·k_j + pos[min(rel(i, j), P-1)] + time[bucket(t_i - t_j)]) * inv_n
//   out_i = Σ_{j visible from i} S_ij v_j          (within one sequence, per head)
// Without a mask, j is visible from i when j <= i (causal) and rel(i, j) = i - j. The relative
// bias is shared by all heads (as in the reference). No N×N matrix is stored: the backward
// recomputes the scores.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/host_device.h"

namespace genrec::cpu {

// Who sees whom inside one sequence of L tokens, beyond causality (MTGR / M-FALCON style):
// - the last num_targets[b] tokens are targets (candidates): each sees the history and itself,
//   never another target, and every target sits at the position of the first one, so the
//   order of candidates does not matter;
// - the first num_contexts tokens are contextual (user features): every token sees them, and
//   they see the whole history (not the targets);
// - max_attn_len > 0 limits history tokens to the last max_attn_len positions (sliding window;
//   contexts stay visible).
struct HstuMask {
  const int64_t* num_targets = nullptr;  // [batch] or null (no targets)
  int64_t num_contexts = 0;
  int64_t max_attn_len = 0;  // 0: unlimited
  bool causal_only() const {
    return num_targets == nullptr && num_contexts == 0 && max_attn_len == 0;
  }
};

// The mask of one sequence: L tokens of which the last `targets` are targets.
struct HstuSequenceMask {
  int64_t history = 0;  // L - targets: tokens [0, history) are not targets
  int64_t contexts = 0;
  int64_t window = 0;

  GENREC_HOST_DEVICE HstuSequenceMask(int64_t length, int64_t targets, const HstuMask& m)
      : history(length - targets), contexts(m.num_contexts), window(m.max_attn_len) {}

  // Position of token i for the relative bias: targets all sit at `history`.
  GENREC_HOST_DEVICE int64_t position(int64_t i) const { return i < history ? i : history; }
  // |position(i) - position(j)|, the index into the position bias (before the P - 1 cap).
  GENREC_HOST_DEVICE int64_t relative(int64_t i, int64_t j) const {
    const int64_t d = position(i) - position(j);
    return d < 0 ? -d : d;
  }
  GENREC_HOST_DEVICE bool visible(int64_t i, int64_t j) const {
    if (j == i) return true;
    if (j >= history) return false;  // a target is seen by itself only
    if (j < contexts || i < contexts) return true;
    if (j > i) return false;  // causal
    return window <= 0 || position(i) - j <= window;
  }
  // The first key any query of [i0, i1) sees besides contexts and itself (for skipping tiles).
  GENREC_HOST_DEVICE int64_t first_key(int64_t i0) const {
    if (contexts > 0 || window <= 0) return 0;
    const int64_t first = position(i0) - window;
    return first > 0 ? first : 0;
  }
};

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
                            const HstuAttentionShape& shape, const HstuRelativeBias& bias,
                            const HstuMask& mask = {});

// d_q, d_k, d_v are written with the strides of q, k, v; d_position_bias and d_time_bias
// accumulate (+=) and are skipped when null.
void hstu_attention_backward(float* d_q, float* d_k, float* d_v, float* d_position_bias,
                             float* d_time_bias, const float* d_out, const float* q, const float* k,
                             const float* v, const int64_t* offsets, int64_t batch_size,
                             const HstuAttentionShape& shape, const HstuRelativeBias& bias,
                             const HstuMask& mask = {});

}  // namespace genrec::cpu
