// Adam and AdamW over fp32 parameters with fp32 moment estimates.
#pragma once

#include <cstdint>

namespace genrec::cpu {

struct AdamConfig {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.98f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  bool decoupled = true;  // true: AdamW (p -= lr*wd*p); false: L2 added to the gradient
};

// One update of n parameters; step counts from 1 (bias correction).
void adam_update(float* param, const float* grad, float* m, float* v, int64_t n,
                 const AdamConfig& config, int64_t step);

}  // namespace genrec::cpu
