#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/error.h"
#include "op_test_util.h"
#include "ops/sampled_softmax.h"
#include "sampled_softmax_problem.h"

namespace genrec {
namespace {

using test::cpu_softmax_forward;
using test::kFdRelTol;
using test::kFp32RelTol;
using test::make_softmax_problem;
using test::SoftmaxProblem;

struct Reference {
  double loss;
  std::vector<double> probs, d_query, d_positive, d_negatives;
};

Reference reference(const SoftmaxProblem& p) {
  const int64_t N = p.N, K = p.K, D = p.D;
  Reference r{0.0, std::vector<double>(N * (K + 1)), std::vector<double>(N * D, 0.0),
              std::vector<double>(N * D, 0.0), std::vector<double>(K * D, 0.0)};
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> logit(K + 1);
    std::vector<bool> live(K + 1, true);
    for (int64_t k = 0; k <= K; ++k) {
      const float* x = k == 0 ? &p.positive[n * D] : &p.negatives[(k - 1) * D];
      double dot = 0.0;
      for (int64_t d = 0; d < D; ++d) dot += double(p.query[n * D + d]) * x[d];
      logit[k] = dot / p.temperature;
      if (k > 0 && p.negative_ids[k - 1] == p.positive_ids[n]) live[k] = false;
    }
    double max = logit[0];
    for (int64_t k = 1; k <= K; ++k) {
      if (live[k]) max = std::max(max, logit[k]);
    }
    double sum = 0.0;
    for (int64_t k = 0; k <= K; ++k) sum += live[k] ? std::exp(logit[k] - max) : 0.0;
    r.loss += (std::log(sum) + max - logit[0]) / N;
    for (int64_t k = 0; k <= K; ++k) {
      const double prob = live[k] ? std::exp(logit[k] - max) / sum : 0.0;
      r.probs[n * (K + 1) + k] = prob;
      const double g = (prob - (k == 0 ? 1.0 : 0.0)) / (N * p.temperature);
      const float* x = k == 0 ? &p.positive[n * D] : &p.negatives[(k - 1) * D];
      double* dx = k == 0 ? &r.d_positive[n * D] : &r.d_negatives[(k - 1) * D];
      for (int64_t d = 0; d < D; ++d) {
        r.d_query[n * D + d] += g * x[d];
        dx[d] += g * p.query[n * D + d];
      }
    }
  }
  return r;
}

TEST(OpsSampledSoftmax, ForwardMatchesReference) {
  struct Case {
    int64_t N, K, D;
    float temperature, scale;
  };
  // The last case has cosine-like logits at temperature 0.05 (|s| up to ~20).
  for (Case c : {Case{6, 5, 8, 1.0f, 1.0f}, Case{300, 128, 32, 0.5f, 2.0f},
                 Case{64, 200, 16, 0.05f, 1.0f}}) {
    SCOPED_TRACE(testing::Message() << "N=" << c.N << " K=" << c.K << " t=" << c.temperature);
    SoftmaxProblem p = make_softmax_problem(c.N, c.K, c.D, c.temperature, c.scale, 7 + c.N);
    std::vector<float> probs;
    const float loss = cpu_softmax_forward(p, probs);
    Reference r = reference(p);
    EXPECT_LT(std::abs(loss - r.loss) / r.loss, kFp32RelTol) << loss << " vs " << r.loss;
    EXPECT_LT(test::rel_l2(probs, r.probs), kFp32RelTol);
    EXPECT_EQ(probs[2], 0.0f) << "row 0's positive among the negatives is masked";
    EXPECT_EQ(probs[c.K], 0.0f);
  }
}

TEST(OpsSampledSoftmax, LogitsInTheThousandsStayFinite) {
  // exp overflows fp32 beyond 88. Softmax probabilities are only as accurate as the logits
  // (an absolute logit error e is a relative probability error e, here ~1e-3), so the probs
  // are checked for being finite and normalised, and the loss against the reference.
  SoftmaxProblem p = make_softmax_problem(8, 40, 16, 0.05f, 30.0f, 5);
  std::vector<float> probs;
  const float loss = cpu_softmax_forward(p, probs);
  Reference r = reference(p);
  EXPECT_GT(r.loss, 100.0);
  EXPECT_LT(std::abs(loss - r.loss) / r.loss, kFp32RelTol) << loss << " vs " << r.loss;
  for (int64_t n = 0; n < p.N; ++n) {
    double sum = 0.0;
    for (int64_t k = 0; k <= p.K; ++k) {
      ASSERT_TRUE(std::isfinite(probs[n * (p.K + 1) + k]));
      sum += probs[n * (p.K + 1) + k];
    }
    EXPECT_NEAR(sum, 1.0, 1e-5) << "row " << n;
  }
}

TEST(OpsSampledSoftmax, BackwardMatchesFiniteDifferences) {
  SoftmaxProblem p = make_softmax_problem(5, 6, 4, 0.5f, 1.5f, 21);
  std::vector<float> probs;
  auto loss = [&] { return static_cast<double>(cpu_softmax_forward(p, probs)); };
  loss();
  std::vector<float> d_query(p.N * p.D), d_positive(p.N * p.D), d_negatives(p.K * p.D);
  test::poison(d_query);
  test::poison(d_positive);
  test::poison(d_negatives);
  cpu::sampled_softmax_backward(d_query.data(), d_positive.data(), d_negatives.data(), probs.data(),
                                p.query.data(), p.positive.data(), p.negatives.data(), p.N, p.K,
                                p.D, p.temperature);
  EXPECT_LT(test::rel_l2(d_query, test::fd_gradient(p.query, loss)), kFdRelTol);
  EXPECT_LT(test::rel_l2(d_positive, test::fd_gradient(p.positive, loss)), kFdRelTol);
  EXPECT_LT(test::rel_l2(d_negatives, test::fd_gradient(p.negatives, loss)), kFdRelTol);
}

TEST(OpsSampledSoftmax, BackwardMatchesReferenceOnLargeBatch) {
  SoftmaxProblem p = make_softmax_problem(400, 256, 48, 0.05f, 1.0f, 31);
  std::vector<float> probs;
  cpu_softmax_forward(p, probs);
  Reference r = reference(p);
  std::vector<float> d_query(p.N * p.D), d_positive(p.N * p.D), d_negatives(p.K * p.D);
  test::poison(d_query);
  test::poison(d_positive);
  test::poison(d_negatives);
  cpu::sampled_softmax_backward(d_query.data(), d_positive.data(), d_negatives.data(), probs.data(),
                                p.query.data(), p.positive.data(), p.negatives.data(), p.N, p.K,
                                p.D, p.temperature);
  EXPECT_LT(test::rel_l2(d_query, r.d_query), kFp32RelTol);
  EXPECT_LT(test::rel_l2(d_positive, r.d_positive), kFp32RelTol);
  EXPECT_LT(test::rel_l2(d_negatives, r.d_negatives), kFp32RelTol);
}

TEST(OpsSampledSoftmax, RejectsNonPositiveTemperature) {
  SoftmaxProblem p = make_softmax_problem(2, 3, 4, 1.0f, 1.0f, 41);
  std::vector<float> probs(2 * 4);
  EXPECT_THROW(cpu::sampled_softmax_forward(probs.data(), p.query.data(), p.positive.data(),
                                            p.positive_ids.data(), p.negatives.data(),
                                            p.negative_ids.data(), 2, 3, 4, 0.0f),
               Error);
}

}  // namespace
}  // namespace genrec
