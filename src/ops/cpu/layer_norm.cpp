// Rows are independent in the forward and in d_in; the weight and bias gradients are column
// sums split over column ranges, so every result is the same whatever the thread count.
#include "ops/layer_norm.h"
#include "ops/cpu/parallel.h"

#include <cmath>
#include <vector>

#include "core/thread_pool.h"

namespace genrec::cpu {
namespace {}  // namespace

void layer_norm_forward(float* out, float* mean, float* rstd, const float* in, const float* weight,
                        const float* bias, int64_t T, int64_t C, float eps) {
  run(T, T * C, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* x = in + t * C;
      float* y = out + t * C;
      float sum = 0.0f;
      for (int64_t c = 0; c < C; ++c) sum += x[c];
      float m = C > 0 ? sum / static_cast<float>(C) : 0.0f;
      float sq = 0.0f;
      for (int64_t c = 0; c < C; ++c) sq += (x[c] - m) * (x[c] - m);
      float r = 1.0f / std::sqrt((C > 0 ? sq / static_cast<float>(C) : 0.0f) + eps);
      for (int64_t c = 0; c < C; ++c) {
        float v = (x[c] - m) * r;
        if (weight != nullptr) v *= weight[c];
        if (bias != nullptr) v += bias[c];
        y[c] = v;
      }
      mean[t] = m;
      rstd[t] = r;
    }
  });
}

void layer_norm_backward(float* d_in, float* d_weight, float* d_bias, const float* d_out,
                         const float* in, const float* weight, const float* mean, const float* rstd,
                         int64_t T, int64_t C) {
  // Parameter gradients first, so that d_in may alias d_out.
  if ((d_weight != nullptr || d_bias != nullptr) && C > 0) {
    run(C, T * C, [&](int64_t c0, int64_t c1, int) {
      int64_t w = c1 - c0;
      std::vector<double> acc_w(w, 0.0), acc_b(w, 0.0);
      for (int64_t t = 0; t < T; ++t) {
        const float* x = in + t * C + c0;
        const float* g = d_out + t * C + c0;
        float m = mean[t], r = rstd[t];
        for (int64_t c = 0; c < w; ++c) {
          acc_w[c] += g[c] * ((x[c] - m) * r);
          acc_b[c] += g[c];
        }
      }
      for (int64_t c = 0; c < w; ++c) {
        if (d_weight != nullptr) d_weight[c0 + c] += static_cast<float>(acc_w[c]);
        if (d_bias != nullptr) d_bias[c0 + c] += static_cast<float>(acc_b[c]);
      }
    });
  }
  run(T, T * C, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* x = in + t * C;
      const float* g = d_out + t * C;
      float* dx = d_in + t * C;
      float m = mean[t], r = rstd[t];
      // d_in = r * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = g * weight.
      float sum_g = 0.0f, sum_gx = 0.0f;
      for (int64_t c = 0; c < C; ++c) {
        float dxhat = weight != nullptr ? g[c] * weight[c] : g[c];
        sum_g += dxhat;
        sum_gx += dxhat * ((x[c] - m) * r);
      }
      float mean_g = sum_g / static_cast<float>(C), mean_gx = sum_gx / static_cast<float>(C);
      for (int64_t c = 0; c < C; ++c) {
        float dxhat = weight != nullptr ? g[c] * weight[c] : g[c];
        dx[c] = r * (dxhat - mean_g - (x[c] - m) * r * mean_gx);
      }
    }
  });
}

}  // namespace genrec::cpu
