// Pointwise ops, split into contiguous chunks over elements (rows for L2 normalisation).
// SiLU uses a 4-lane polynomial exp (as in hstu_attention.cpp); dropout draws Philox blocks
// for runs of whole blocks in a loop the compiler vectorises, matching philox_uniform(i).
#include "ops/elementwise.h"
#include "ops/cpu/parallel.h"

#include <algorithm>
#include <bit>
#include <cmath>

#include "core/error.h"
#include "core/philox.h"
#include "core/thread_pool.h"
#include "ops/cpu/simd.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace genrec::cpu {
namespace {

// Whether element i survives: its 24-bit uniform k / 2^24 >= p, i.e. k >= ceil(p * 2^24).
uint32_t keep_threshold(float p) {
  return static_cast<uint32_t>(std::ceil(static_cast<double>(p) * 16777216.0));
}

// out = in * scale where kept, else 0, for i in [b, e). Runs of whole Philox blocks go
// through a staging buffer in two vectorisable loops; partial blocks at the ends per element.
void dropout_range(float* out, const float* in, int64_t b, int64_t e, uint32_t threshold,
                   float scale, uint64_t seed, uint64_t offset) {
  auto one = [&](int64_t i) {
    const bool keep = (philox_u32(seed, offset, static_cast<uint64_t>(i)) >> 8) >= threshold;
    out[i] = keep ? in[i] * scale : 0.0f;
  };
  int64_t i = b;
  for (; i < e && (i & 3) != 0; ++i) one(i);
  constexpr int64_t kBlocks = 64;
  uint32_t words[4 * kBlocks];
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t o0 = static_cast<uint32_t>(offset), o1 = static_cast<uint32_t>(offset >> 32);
  while (e - i >= 4) {
    const int64_t blocks = std::min(kBlocks, (e - i) / 4);
    const uint64_t first = static_cast<uint64_t>(i) >> 2;
    for (int64_t k = 0; k < blocks; ++k) {
      const uint64_t block = first + static_cast<uint64_t>(k);
      Philox4 r = philox4x32(
          Philox4{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), o0, o1}, k0,
          k1);
      words[4 * k] = r.x;
      words[4 * k + 1] = r.y;
      words[4 * k + 2] = r.z;
      words[4 * k + 3] = r.w;
    }
    const float* src = in + i;
    float* dst = out + i;
    for (int64_t k = 0; k < 4 * blocks; ++k) {
      // Masking the bits, not selecting, keeps the loop free of branches.
      const uint32_t mask = (words[k] >> 8) >= threshold ? 0xFFFFFFFFu : 0u;
      dst[k] = std::bit_cast<float>(std::bit_cast<uint32_t>(src[k] * scale) & mask);
    }
    i += 4 * blocks;
  }
  for (; i < e; ++i) one(i);
}

}  // namespace

void silu_forward(float* out, const float* in, int64_t n) {
  run(n, n, [&](int64_t b, int64_t e, int) {
    int64_t i = b;
#if defined(__SSE2__)
    for (; i + 4 <= e; i += 4) {
      __m128 x = _mm_loadu_ps(in + i);
      _mm_storeu_ps(out + i, _mm_mul_ps(x, sigmoid4(x)));
    }
#endif
    for (; i < e; ++i) out[i] = in[i] / (1.0f + std::exp(-in[i]));
  });
}

void silu_backward(float* d_in, const float* d_out, const float* in, int64_t n) {
  run(n, n, [&](int64_t b, int64_t e, int) {
    int64_t i = b;
#if defined(__SSE2__)
    const __m128 one = _mm_set1_ps(1.0f);
    for (; i + 4 <= e; i += 4) {
      __m128 x = _mm_loadu_ps(in + i), s = sigmoid4(x);
      __m128 d = _mm_mul_ps(s, _mm_add_ps(one, _mm_mul_ps(x, _mm_sub_ps(one, s))));
      _mm_storeu_ps(d_in + i, _mm_mul_ps(_mm_loadu_ps(d_out + i), d));
    }
#endif
    for (; i < e; ++i) {
      float x = in[i], s = 1.0f / (1.0f + std::exp(-x));
      d_in[i] = d_out[i] * s * (1.0f + x * (1.0f - s));
    }
  });
}

void gate_forward(float* out, const float* x, const float* u, int64_t ldu, int64_t T, int64_t C) {
  GENREC_CHECK(ldu >= C, "gate: ldu {} < C {}", ldu, C);
  run(T, T * C, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* xr = x + t * C;
      const float* ur = u + t * ldu;
      float* o = out + t * C;
      for (int64_t c = 0; c < C; ++c) o[c] = xr[c] * ur[c];
    }
  });
}

void gate_backward(float* d_x, float* d_u, const float* d_out, const float* x, const float* u,
                   int64_t ldu, int64_t T, int64_t C) {
  GENREC_CHECK(ldu >= C, "gate: ldu {} < C {}", ldu, C);
  run(T, T * C, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* g = d_out + t * C;
      const float* xr = x + t * C;
      const float* ur = u + t * ldu;
      float* dx = d_x + t * C;
      float* du = d_u + t * ldu;
      for (int64_t c = 0; c < C; ++c) {
        float gc = g[c], xc = xr[c], uc = ur[c];
        dx[c] = gc * uc;
        du[c] = gc * xc;
      }
    }
  });
}

void l2_normalize_forward(float* out, float* inv_norm, const float* x, int64_t T, int64_t C,
                          float eps) {
  run(T, T * C, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* xr = x + t * C;
      float* o = out + t * C;
      double sq = 0.0;
      for (int64_t c = 0; c < C; ++c) sq += static_cast<double>(xr[c]) * xr[c];
      float inv = static_cast<float>(1.0 / std::max(std::sqrt(sq), static_cast<double>(eps)));
      for (int64_t c = 0; c < C; ++c) o[c] = xr[c] * inv;
      inv_norm[t] = inv;
    }
  });
}

void l2_normalize_backward(float* d_x, const float* d_out, const float* out, const float* inv_norm,
                           int64_t T, int64_t C) {
  // Unclamped rows have unit norm: there d_x = inv * (g - out (out·g)); a row whose norm was
  // clamped to eps has ||out|| = ||x|| / eps < 1 and d_x = inv * g.
  constexpr double kUnitNormSq = 1.0 - 1e-5;
  run(T, T * C, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* g = d_out + t * C;
      const float* o = out + t * C;
      float* dx = d_x + t * C;
      double dot = 0.0, sq = 0.0;
      for (int64_t c = 0; c < C; ++c) {
        dot += static_cast<double>(o[c]) * g[c];
        sq += static_cast<double>(o[c]) * o[c];
      }
      float proj = sq >= kUnitNormSq ? static_cast<float>(dot) : 0.0f;
      float inv = inv_norm[t];
      for (int64_t c = 0; c < C; ++c) dx[c] = inv * (g[c] - o[c] * proj);
    }
  });
}

void dropout_forward(float* out, const float* in, int64_t n, float p, uint64_t seed,
                     uint64_t offset) {
  GENREC_CHECK(p >= 0.0f && p <= 1.0f, "dropout probability {} outside [0, 1]", p);
  if (p == 0.0f) {
    if (out != in) std::copy(in, in + n, out);
    return;
  }
  const float scale = 1.0f / (1.0f - p);
  const uint32_t threshold = keep_threshold(p);
  run(n, n, [&](int64_t b, int64_t e, int) {
    dropout_range(out, in, b, e, threshold, scale, seed, offset);
  });
}

void dropout_backward(float* d_in, const float* d_out, int64_t n, float p, uint64_t seed,
                      uint64_t offset) {
  dropout_forward(d_in, d_out, n, p, seed, offset);
}

}  // namespace genrec::cpu
