// All CPU parallelism goes through genrec's thread pool: OpenBLAS runs single-threaded (its own
// idle workers spin and starve the pool on small machines) and a large product is split into
// row or column blocks of C across the pool. The bias gradient is split over columns.
#include "ops/gemm.h"
#include "ops/cpu/parallel.h"

#include <cblas.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"

namespace genrec::cpu {
namespace {

// M*N*K from which a product is split across the pool (~2 MFLOP, well above the cost of
// waking the workers).
constexpr int64_t kParallelGemmWork = 1 << 20;
constexpr int64_t kSplitAlign = 64;

bool fits_int(int64_t x) {
  return x >= 0 && x <= std::numeric_limits<int>::max();
}

void blas_single_threaded() {
#if defined(OPENBLAS_VERSION)
  static const bool once = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)once;
#endif
}

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(M), static_cast<int>(N),
              static_cast<int>(K), alpha, A, static_cast<int>(lda), B, static_cast<int>(ldb), beta,
              C, static_cast<int>(ldc));
}

}  // namespace

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  GENREC_CHECK(fits_int(M) && fits_int(N) && fits_int(K), "gemm: bad sizes M={} N={} K={}", M, N,
               K);
  if (M == 0 || N == 0) return;
  GENREC_CHECK(ldc >= N && fits_int(ldc), "gemm: ldc {} < N {}", ldc, N);
  if (K == 0 || alpha == 0.0f) {
    // BLAS semantics: beta == 0 overwrites C without reading it (NaNs in C are not kept).
    for (int64_t i = 0; i < M; ++i) {
      float* c = C + i * ldc;
      if (beta == 0.0f) {
        std::fill(c, c + N, 0.0f);
      } else if (beta != 1.0f) {
        for (int64_t j = 0; j < N; ++j) c[j] *= beta;
      }
    }
    return;
  }
  const int64_t a_cols = trans_a ? M : K, b_cols = trans_b ? K : N;
  GENREC_CHECK(lda >= a_cols && fits_int(lda), "gemm: lda {} < {} columns of A", lda, a_cols);
  GENREC_CHECK(ldb >= b_cols && fits_int(ldb), "gemm: ldb {} < {} columns of B", ldb, b_cols);
  blas_single_threaded();
  if (M * N * K < kParallelGemmWork || ThreadPool::global().num_threads() == 1) {
    sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  } else if (M >= N) {
    parallel_for((M + kSplitAlign - 1) / kSplitAlign, [&](int64_t b0, int64_t b1, int) {
      const int64_t m0 = b0 * kSplitAlign, m1 = std::min(M, b1 * kSplitAlign);
      const float* a = trans_a ? A + m0 : A + m0 * lda;
      sgemm(trans_a, trans_b, m1 - m0, N, K, alpha, a, lda, B, ldb, beta, C + m0 * ldc, ldc);
    });
  } else {
    parallel_for((N + kSplitAlign - 1) / kSplitAlign, [&](int64_t b0, int64_t b1, int) {
      const int64_t n0 = b0 * kSplitAlign, n1 = std::min(N, b1 * kSplitAlign);
      const float* b = trans_b ? B + n0 * ldb : B + n0;
      sgemm(trans_a, trans_b, M, n1 - n0, K, alpha, A, lda, b, ldb, beta, C + n0, ldc);
    });
  }
}

void linear_forward(float* out, const float* in, const float* weight, const float* bias, int64_t T,
                    int64_t IC, int64_t OC) {
  if (bias != nullptr) {
    for (int64_t t = 0; t < T; ++t) std::copy(bias, bias + OC, out + t * OC);
  }
  gemm(false, false, T, OC, IC, 1.0f, in, IC, weight, OC, bias != nullptr ? 1.0f : 0.0f, out, OC);
}

void linear_backward(float* d_in, float* d_weight, float* d_bias, const float* d_out,
                     const float* in, const float* weight, int64_t T, int64_t IC, int64_t OC) {
  if (d_in != nullptr) gemm(false, true, T, IC, OC, 1.0f, d_out, OC, weight, OC, 0.0f, d_in, IC);
  if (d_weight != nullptr) {
    gemm(true, false, IC, OC, T, 1.0f, in, IC, d_out, OC, 1.0f, d_weight, OC);
  }
  if (d_bias == nullptr || OC == 0) return;
  auto column_sums = [&](int64_t c0, int64_t c1, int) {
    std::vector<double> acc(c1 - c0, 0.0);
    for (int64_t t = 0; t < T; ++t) {
      const float* row = d_out + t * OC + c0;
      for (int64_t c = 0; c < c1 - c0; ++c) acc[c] += row[c];
    }
    for (int64_t c = c0; c < c1; ++c) d_bias[c] += static_cast<float>(acc[c - c0]);
  };
  if (T * OC < kParallelWork) {
    column_sums(0, OC, 0);
  } else {
    parallel_for(OC, column_sums);
  }
}

}  // namespace genrec::cpu
