// The negative logits are one GEMM written straight into probs[:, 1:]; each row is then
// turned into a softmax in place (4-lane exp, masked negatives set to 0 afterwards). The
// backward is two GEMMs on probs[:, 1:] plus rank-1 row terms for the positive.
#include "ops/sampled_softmax.h"
#include "ops/cpu/parallel.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "ops/cpu/simd.h"
#include "ops/gemm.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace genrec::cpu {
namespace {

#if defined(__SSE2__)

inline float horizontal_max(__m128 v) {
  v = _mm_max_ps(v, _mm_shuffle_ps(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm_cvtss_f32(_mm_max_ps(v, _mm_shuffle_ps(v, v, _MM_SHUFFLE(2, 3, 0, 1))));
}

inline float horizontal_sum(__m128 v) {
  v = _mm_add_ps(v, _mm_shuffle_ps(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm_cvtss_f32(_mm_add_ps(v, _mm_shuffle_ps(v, v, _MM_SHUFFLE(2, 3, 0, 1))));
}
#endif

float row_max(const float* s, int64_t n) {
  float m = s[0];
  int64_t k = 0;
#if defined(__SSE2__)
  if (n >= 4) {
    __m128 vm = _mm_loadu_ps(s);
    for (k = 4; k + 4 <= n; k += 4) vm = _mm_max_ps(vm, _mm_loadu_ps(s + k));
    m = horizontal_max(vm);
  }
#endif
  for (; k < n; ++k) m = std::max(m, s[k]);
  return m;
}

// s[k] <- exp(s[k] - m); returns the sum.
float exp_shifted(float* s, int64_t n, float m) {
  float sum = 0.0f;
  int64_t k = 0;
#if defined(__SSE2__)
  const __m128 vm = _mm_set1_ps(m);
  __m128 vsum = _mm_setzero_ps();
  for (; k + 4 <= n; k += 4) {
    __m128 e = exp_poly(_mm_sub_ps(_mm_loadu_ps(s + k), vm));
    _mm_storeu_ps(s + k, e);
    vsum = _mm_add_ps(vsum, e);
  }
  sum = horizontal_sum(vsum);
#endif
  for (; k < n; ++k) {
    s[k] = std::exp(s[k] - m);
    sum += s[k];
  }
  return sum;
}

}  // namespace

float sampled_softmax_forward(float* probs, const float* query, const float* positive,
                              const int64_t* positive_ids, const float* negatives,
                              const int64_t* negative_ids, int64_t N, int64_t K, int64_t D,
                              float temperature) {
  GENREC_CHECK(temperature > 0.0f, "sampled softmax: temperature {} must be > 0", temperature);
  GENREC_CHECK(N >= 0 && K >= 0 && D >= 0, "sampled softmax: bad sizes N={} K={} D={}", N, K, D);
  GENREC_CHECK(K == 0 || (positive_ids != nullptr && negative_ids != nullptr),
               "sampled softmax: positive and negative ids are needed to mask negatives");
  if (N == 0) return 0.0f;
  const float inv_t = 1.0f / temperature;
  const int64_t ld = K + 1;
  gemm(false, true, N, K, D, inv_t, query, D, negatives, D, 0.0f, probs + 1, ld);
  std::vector<double> row_loss(N);
  run(N, N * (K + D), [&](int64_t n0, int64_t n1, int) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* q = query + n * D;
      const float* p = positive + n * D;
      float* s = probs + n * ld;
      float dot = 0.0f;
      for (int64_t d = 0; d < D; ++d) dot += q[d] * p[d];
      const float logit0 = dot * inv_t;
      s[0] = logit0;
      const int64_t pos_id = positive_ids[n];
      for (int64_t k = 0; k < K; ++k) {
        if (negative_ids[k] == pos_id) s[k + 1] = -std::numeric_limits<float>::infinity();
      }
      const float max = row_max(s, K + 1);
      const float sum = exp_shifted(s, K + 1, max);
      for (int64_t k = 0; k < K; ++k) {
        if (negative_ids[k] == pos_id) s[k + 1] = 0.0f;
      }
      const float inv_sum = 1.0f / sum;
      for (int64_t k = 0; k <= K; ++k) s[k] *= inv_sum;
      row_loss[n] = std::log(static_cast<double>(sum)) + (static_cast<double>(max) - logit0);
    }
  });
  double total = 0.0;
  for (double l : row_loss) total += l;
  return static_cast<float>(total / static_cast<double>(N));
}

void sampled_softmax_backward(float* d_query, float* d_positive, float* d_negatives,
                              const float* probs, const float* query, const float* positive,
                              const float* negatives, int64_t N, int64_t K, int64_t D,
                              float temperature) {
  GENREC_CHECK(temperature > 0.0f, "sampled softmax: temperature {} must be > 0", temperature);
  const int64_t ld = K + 1;
  if (N == 0) {
    std::fill(d_negatives, d_negatives + K * D, 0.0f);
    return;
  }
  // dloss/dlogit = (probs - onehot(0)) / N; a logit is q·x / temperature.
  const float scale = 1.0f / (static_cast<float>(N) * temperature);
  gemm(false, false, N, D, K, scale, probs + 1, ld, negatives, D, 0.0f, d_query, D);
  gemm(true, false, K, D, N, scale, probs + 1, ld, query, D, 0.0f, d_negatives, D);
  run(N, N * D, [&](int64_t n0, int64_t n1, int) {
    for (int64_t n = n0; n < n1; ++n) {
      const float g = (probs[n * ld] - 1.0f) * scale;
      const float* q = query + n * D;
      const float* p = positive + n * D;
      float* dq = d_query + n * D;
      float* dp = d_positive + n * D;
      for (int64_t d = 0; d < D; ++d) {
        dq[d] += g * p[d];
        dp[d] = g * q[d];
      }
    }
  });
}

}  // namespace genrec::cpu
