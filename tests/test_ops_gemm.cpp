#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/error.h"
#include "op_test_util.h"
#include "ops/gemm.h"

namespace genrec {
namespace {

using test::kFdRelTol;
using test::kFp32RelTol;

// C = alpha op(A) op(B) + beta C over the first N columns of each row of C (stride ldc).
std::vector<double> gemm_reference(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha,
                                   const std::vector<float>& A, int64_t lda,
                                   const std::vector<float>& B, int64_t ldb, double beta,
                                   const std::vector<float>& C, int64_t ldc) {
  std::vector<double> out(C.begin(), C.end());
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double s = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        double a = ta ? A[k * lda + i] : A[i * lda + k];
        double b = tb ? B[j * ldb + k] : B[k * ldb + j];
        s += a * b;
      }
      out[i * ldc + j] = alpha * s + (beta == 0.0 ? 0.0 : beta * C[i * ldc + j]);
    }
  }
  return out;
}

void check_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, float beta,
                uint64_t seed) {
  SCOPED_TRACE(testing::Message() << "ta=" << ta << " tb=" << tb << " M=" << M << " N=" << N
                                  << " K=" << K << " beta=" << beta);
  const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 2;
  auto A = test::random_normal((ta ? K : M) * lda, seed);
  auto B = test::random_normal((tb ? N : K) * ldb, seed + 1);
  auto C = test::random_normal(M * ldc, seed + 2);
  if (beta == 0.0f) {
    // Poison the columns gemm must write; padding keeps its random values.
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = std::nanf("");
    }
  }
  auto ref = gemm_reference(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  cpu::gemm(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);
  EXPECT_LT(test::rel_l2(C, ref), kFp32RelTol);
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = N; j < ldc; ++j) ASSERT_EQ(C[i * ldc + j], ref[i * ldc + j]) << "padding";
  }
}

TEST(OpsGemm, MatchesReferenceForAllTransposesAndStrides) {
  uint64_t seed = 100;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      for (float beta : {0.0f, 1.0f, -0.6f}) {
        check_gemm(ta, tb, 37, 29, 53, 0.7f, beta, seed += 3);
        check_gemm(ta, tb, 1, 5, 1, -1.5f, beta, seed += 3);
      }
    }
  }
}

// Large enough to be split over the thread pool: by rows of C when M >= N, else by columns.
TEST(OpsGemm, LargeProductsSplitAcrossThreads) {
  uint64_t seed = 7;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      check_gemm(ta, tb, 300, 170, 280, 1.0f, 0.0f, seed += 3);
      check_gemm(ta, tb, 150, 310, 290, 0.5f, 1.0f, seed += 3);
    }
  }
}

TEST(OpsGemm, EmptyInnerDimensionScalesC) {
  std::vector<float> C(6, std::nanf(""));
  cpu::gemm(false, false, 2, 3, 0, 1.0f, nullptr, 1, nullptr, 3, 0.0f, C.data(), 3);
  for (float c : C) EXPECT_EQ(c, 0.0f);
  std::vector<float> D = {1, 2, 3, 4, 5, 6};
  cpu::gemm(true, true, 2, 3, 0, 1.0f, nullptr, 2, nullptr, 1, 2.0f, D.data(), 3);
  EXPECT_EQ(D, (std::vector<float>{2, 4, 6, 8, 10, 12}));
}

TEST(OpsGemm, RejectsShortLeadingDimension) {
  std::vector<float> A(12), B(12), C(12);
  EXPECT_THROW(cpu::gemm(false, false, 3, 4, 3, 1.0f, A.data(), 2, B.data(), 4, 0.0f, C.data(), 4),
               Error);
  EXPECT_THROW(cpu::gemm(false, false, 3, 4, 3, 1.0f, A.data(), 3, B.data(), 4, 0.0f, C.data(), 3),
               Error);
}

struct LinearCase {
  int64_t T, IC, OC;
};

std::vector<double> linear_reference(const std::vector<float>& in, const std::vector<float>& w,
                                     const float* bias, int64_t T, int64_t IC, int64_t OC) {
  std::vector<double> out(T * OC);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t o = 0; o < OC; ++o) {
      double s = bias != nullptr ? bias[o] : 0.0;
      for (int64_t i = 0; i < IC; ++i) s += static_cast<double>(in[t * IC + i]) * w[i * OC + o];
      out[t * OC + o] = s;
    }
  }
  return out;
}

TEST(OpsLinear, ForwardMatchesReference) {
  for (LinearCase c : {LinearCase{5, 7, 3}, LinearCase{300, 64, 96}}) {
    auto in = test::random_normal(c.T * c.IC, 1), w = test::random_normal(c.IC * c.OC, 2);
    auto b = test::random_normal(c.OC, 3);
    for (bool with_bias : {true, false}) {
      std::vector<float> out(c.T * c.OC);
      test::poison(out);
      const float* bias = with_bias ? b.data() : nullptr;
      cpu::linear_forward(out.data(), in.data(), w.data(), bias, c.T, c.IC, c.OC);
      EXPECT_LT(test::rel_l2(out, linear_reference(in, w, bias, c.T, c.IC, c.OC)), kFp32RelTol)
          << "T=" << c.T << " bias=" << with_bias;
    }
  }
}

TEST(OpsLinear, BackwardMatchesFiniteDifferences) {
  const int64_t T = 6, IC = 5, OC = 4;
  auto in = test::random_normal(T * IC, 11), w = test::random_normal(IC * OC, 12);
  auto b = test::random_normal(OC, 13);
  auto wts = test::random_weights(T * OC, 14);
  std::vector<float> out(T * OC);
  auto loss = [&] {
    cpu::linear_forward(out.data(), in.data(), w.data(), b.data(), T, IC, OC);
    return test::weighted_sum(out.data(), wts);
  };
  std::vector<float> d_out(wts.begin(), wts.end());
  std::vector<float> d_in(T * IC);
  test::poison(d_in);
  auto d_w0 = test::random_normal(IC * OC, 15), d_b0 = test::random_normal(OC, 16);
  auto d_w = d_w0, d_b = d_b0;
  cpu::linear_backward(d_in.data(), d_w.data(), d_b.data(), d_out.data(), in.data(), w.data(), T,
                       IC, OC);
  EXPECT_LT(test::rel_l2(d_in, test::fd_gradient(in, loss)), kFdRelTol);
  EXPECT_LT(test::rel_l2(test::difference(d_w, d_w0), test::fd_gradient(w, loss)), kFdRelTol);
  EXPECT_LT(test::rel_l2(test::difference(d_b, d_b0), test::fd_gradient(b, loss)), kFdRelTol);
}

TEST(OpsLinear, BackwardAccumulatesParametersAndMatchesReference) {
  const int64_t T = 400, IC = 48, OC = 80;  // T * OC above the parallel threshold
  auto in = test::random_normal(T * IC, 21), w = test::random_normal(IC * OC, 22);
  auto d_out = test::random_normal(T * OC, 23);
  auto d_w0 = test::random_normal(IC * OC, 24), d_b0 = test::random_normal(OC, 25);
  std::vector<double> ref_in(T * IC, 0.0), ref_w(IC * OC, 0.0), ref_b(OC, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t o = 0; o < OC; ++o) {
      const double g = d_out[t * OC + o];
      ref_b[o] += g;
      for (int64_t i = 0; i < IC; ++i) {
        ref_in[t * IC + i] += g * w[i * OC + o];
        ref_w[i * OC + o] += g * in[t * IC + i];
      }
    }
  }
  std::vector<float> d_in(T * IC);
  test::poison(d_in);
  auto d_w = d_w0, d_b = d_b0;
  cpu::linear_backward(d_in.data(), d_w.data(), d_b.data(), d_out.data(), in.data(), w.data(), T,
                       IC, OC);
  EXPECT_LT(test::rel_l2(d_in, ref_in), kFp32RelTol);
  EXPECT_LT(test::rel_l2(test::difference(d_w, d_w0), ref_w), kFp32RelTol);
  EXPECT_LT(test::rel_l2(test::difference(d_b, d_b0), ref_b), kFp32RelTol);

  // d_in and d_bias are optional.
  auto d_w2 = d_w0;
  cpu::linear_backward(nullptr, d_w2.data(), nullptr, d_out.data(), in.data(), w.data(), T, IC, OC);
  EXPECT_EQ(d_w2, d_w);
}

}  // namespace
}  // namespace genrec
