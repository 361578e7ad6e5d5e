// HstuBlock: one HSTU layer (Zhai et al. 2024) with explicit forward and backward over
// activations it keeps between the two calls (llm.c style, no autograd):
//   Xn = LN(X); [U|V|Q|K] = SiLU(Xn·W1 + b1); A = HstuAttention(Q, K, V)
//   O = Dropout(LN(A) ⊙ U); out = X + O·W2 + b2
// Dropout sits before the output projection, as in the public reference implementation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/parameters.h"
#include "ops/hstu_attention.h"

namespace genrec {

struct HstuBlockConfig {
  int64_t dim = 64;       // model width D
  int64_t num_heads = 1;  // H
  int64_t dim_qk = 64;    // per head
  int64_t dim_v = 64;     // per head
  float dropout = 0.2f;
  int64_t num_positions = 200;   // relative position bias buckets (0 = off)
  int64_t num_time_buckets = 0;  // relative time bias buckets (0 = off)
  float layer_norm_eps = 1e-6f;
};

// What every block of a forward pass shares: the jagged layout and the step's dropout seed.
struct HstuBatchContext {
  const int64_t* offsets = nullptr;  // [B + 1]
  int64_t batch_size = 0;
  int64_t num_tokens = 0;
  const int64_t* timestamps = nullptr;  // [T]; needed by the time bias
  float inv_n = 1.0f;                   // attention normalisation 1 / N
  bool training = false;
  uint64_t dropout_seed = 0;
};

// Indices of one block's parameters in a ParameterSet; every backend shares this layout, so
// checkpoints move between them.
struct HstuBlockParams {
  int ln1_w, ln1_b, w_uvqk, b_uvqk, w_out, b_out;
  int pos_bias = -1, time_bias = -1;  // -1 when that bias is off
};

// Declares the block's parameters under names prefixed by `prefix`.
HstuBlockParams declare_hstu_block(ParameterSet& params, const std::string& prefix,
                                   const HstuBlockConfig& config);

// Width of the fused projection: [U | V | Q | K] = H * (2 dv + 2 dqk).
inline int64_t hstu_uvqk_width(const HstuBlockConfig& c) {
  return c.num_heads * (2 * c.dim_v + 2 * c.dim_qk);
}

// The CPU implementation of the block.
class HstuBlock {
 public:
  HstuBlock(const HstuBlockConfig& config, ParameterSet& params, const HstuBlockParams& ids,
            uint64_t dropout_stream);

  // out[T, D] = block(x[T, D]); x must stay unchanged until backward.
  void forward(float* out, const float* x, const HstuBatchContext& ctx);
  // d_x written from d_out; parameter gradients accumulate in the ParameterSet.
  void backward(float* d_x, const float* d_out, const float* x, const HstuBatchContext& ctx);

  const HstuBlockConfig& config() const { return config_; }

 private:
  int64_t uvqk_width() const { return hstu_uvqk_width(config_); }
  cpu::HstuAttentionShape attention_shape(const HstuBatchContext& ctx) const;
  cpu::HstuRelativeBias relative_bias(const HstuBatchContext& ctx) const;

  HstuBlockConfig config_;
  ParameterSet& params_;
  uint64_t dropout_stream_;
  HstuBlockParams ids_;
  // Activations kept from forward for backward, grown on demand.
  std::vector<float> ln1_, mean1_, rstd1_, pre_, uvqk_, attn_, ln2_, mean2_, rstd2_, gated_;
  // Backward scratch.
  std::vector<float> d_gated_, d_ln2_, d_attn_, d_uvqk_, d_ln1_;
};

}  // namespace genrec
