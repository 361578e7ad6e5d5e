// One bf16 training step of the CUDA model against the fp32 CPU model's: the model both tests
// of it use (static and dynamic item tables) and how far the two may be apart.
#pragma once

#include "model/retrieval_model.h"

namespace genrec::test {

// Two HSTU layers with position and time bias, dropout, sampled and in-batch negatives.
inline RetrievalConfig step_check_config() {
  RetrievalConfig config;
  config.num_items = 500;
  config.dim = 64;
  config.num_layers = 2;
  config.num_heads = 2;
  config.dim_qk = 32;
  config.dim_v = 32;
  config.dropout = 0.2f;
  config.max_len = 50;
  config.time_bias = true;
  config.num_negatives = 128;
  config.in_batch_negatives = true;
  return config;
}

// bf16 keeps 8 mantissa bits (relative rounding 2^-9 ≈ 2e-3 per value); through two HSTU
// layers with fp32 accumulation the loss stays within 1e-2 and the gradient vector within a
// few 1e-2 (it sums many bf16-rounded products, mostly of small terms).
constexpr double kLossTolerance = 1e-2;
constexpr double kGradTolerance = 5e-2;
// Adam's first update is lr * g / (|g| + eps) = ±lr wherever the gradient is not tiny, so the
// update is a sign pattern: where |g| is far above the bf16 noise the signs must agree, and the
// whole update may differ only in the few elements whose gradient is near zero.
constexpr double kDecisiveGradient = 0.1;  // |g| >= 0.1 x rms(g) of its parameter
constexpr double kDecisiveSignFlips = 1e-3;
constexpr double kUpdateTolerance = 0.2;  // |Δgpu - Δcpu| / |Δcpu|: 2 sqrt(flipped fraction)

}  // namespace genrec::test
