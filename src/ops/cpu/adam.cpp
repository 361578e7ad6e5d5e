// Adam/AdamW in the PyTorch form: bias corrections folded into a step size and the eps term,
// computed in double once per call; the per-element update is float and split over threads.
#include "ops/adam.h"
#include "ops/cpu/parallel.h"

#include <cmath>

#include "core/error.h"
#include "core/thread_pool.h"

namespace genrec::cpu {
namespace {}  // namespace

void adam_update(float* param, const float* grad, float* m, float* v, int64_t n,
                 const AdamConfig& config, int64_t step) {
  GENREC_CHECK(step >= 1, "adam: step counts from 1, got {}", step);
  const float beta1 = config.beta1, beta2 = config.beta2, eps = config.eps;
  const double bias1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step));
  const double bias2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step));
  // p -= lr/bias1 * m / (sqrt(v)/sqrt(bias2) + eps)
  const float step_size = static_cast<float>(config.lr / bias1);
  const float inv_sqrt_bias2 = static_cast<float>(1.0 / std::sqrt(bias2));
  const float l2 = config.decoupled ? 0.0f : config.weight_decay;
  const float decay = config.decoupled ? 1.0f - config.lr * config.weight_decay : 1.0f;
  auto update = [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      float p = param[i];
      float g = grad[i] + l2 * p;
      float mi = beta1 * m[i] + (1.0f - beta1) * g;
      float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
      m[i] = mi;
      v[i] = vi;
      param[i] = p * decay - step_size * mi / (std::sqrt(vi) * inv_sqrt_bias2 + eps);
    }
  };
  if (n < kParallelWork) {
    if (n > 0) update(0, n, 0);
  } else {
    parallel_for(n, update);
  }
}

}  // namespace genrec::cpu
