// CUDA sampled softmax against the CPU op on the same random problems (shared negatives, some
// equal to a row's positive and so masked), forward and backward. Each test holds a cuBLASLt
// context for the op's products, as a model does.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../sampled_softmax_problem.h"
#include "core/error.h"
#include "cuda_test_util.h"
#include "ops/cuda/sampled_softmax.h"
#include "ops/sampled_softmax.h"

namespace genrec {
namespace {

using test::cpu_softmax_forward;
using test::kCudaF32RelTol;
using test::make_softmax_problem;
using test::SoftmaxProblem;

// Tolerance kCudaF32RelTol: both ops compute in fp32 with different summation orders (dot
// products over D <= 128, softmax sums over K + 1 <= 1001 terms, gradient GEMMs over K or
// N <= 4096, which cuBLASLt may split): relative differences of order 1e-7 to 1e-6. 1e-5 still
// flags a single wrong element.

struct DeviceProblem {
  test::DeviceArray<float> query, positive, negatives;
  test::DeviceArray<int64_t> positive_ids, negative_ids;
  explicit DeviceProblem(const SoftmaxProblem& p)
      : query(test::upload<float>(p.query)),
        positive(test::upload<float>(p.positive)),
        negatives(test::upload<float>(p.negatives)),
        positive_ids(test::upload_raw(p.positive_ids)),
        negative_ids(test::upload_raw(p.negative_ids)) {}
};

float cuda_forward(cuda::GemmContext& ctx, const SoftmaxProblem& p, const DeviceProblem& d,
                   std::vector<float>& probs) {
  test::DeviceArray<float> dev_probs(p.N * (p.K + 1));
  dev_probs.poison();
  const float loss = cuda::sampled_softmax_forward(
      ctx, dev_probs.get(), d.query.get(), d.positive.get(), d.positive_ids.get(),
      d.negatives.get(), d.negative_ids.get(), p.N, p.K, p.D, p.temperature, nullptr);
  probs = dev_probs.download();
  return loss;
}

double rel_diff(double a, double b) {
  return std::abs(a - b) / std::max(std::abs(b), 1e-30);
}

struct Case {
  int64_t N, K, D;
  float temperature, scale;
};

// Batch sizes 1..4096, no / one / many negatives, cosine-like logits at temperature 0.05; the
// last case's d_negatives reduces over 4096 rows into few outputs (a training step's shape).
const Case kCases[] = {
    {1, 1, 8, 1.0f, 1.0f},      {7, 5, 8, 1.0f, 1.0f},        {64, 0, 16, 0.5f, 1.0f},
    {256, 128, 32, 0.5f, 2.0f}, {300, 1000, 48, 0.05f, 1.0f}, {64, 200, 64, 0.05f, 1.0f},
    {33, 77, 1, 1.0f, 1.0f},    {4096, 64, 128, 0.05f, 1.0f},
};

TEST(CudaSampledSoftmax, ForwardMatchesCpu) {
  GENREC_REQUIRE_CUDA();
  cuda::GemmContext ctx;
  for (const Case& c : kCases) {
    SCOPED_TRACE(testing::Message()
                 << "N=" << c.N << " K=" << c.K << " D=" << c.D << " t=" << c.temperature);
    SoftmaxProblem p = make_softmax_problem(c.N, c.K, c.D, c.temperature, c.scale, 7 + c.N + c.K);
    DeviceProblem d(p);
    std::vector<float> ref_probs, probs;
    const float ref_loss = cpu_softmax_forward(p, ref_probs);
    const float loss = cuda_forward(ctx, p, d, probs);
    EXPECT_LT(rel_diff(loss, ref_loss), kCudaF32RelTol) << loss << " vs " << ref_loss;
    EXPECT_LT(test::rel_l2(probs, ref_probs), kCudaF32RelTol);
    if (c.K >= 3) {
      EXPECT_EQ(probs[2], 0.0f) << "row 0's positive among the negatives is masked";
      EXPECT_EQ(probs[c.K], 0.0f);
    }
  }
}

TEST(CudaSampledSoftmax, AsyncVariantWritesTheSameLossOnTheDevice) {
  GENREC_REQUIRE_CUDA();
  cuda::GemmContext ctx;
  SoftmaxProblem p = make_softmax_problem(100, 50, 24, 0.1f, 1.0f, 11);
  DeviceProblem d(p);
  std::vector<float> probs;
  const float host_loss = cuda_forward(ctx, p, d, probs);
  test::DeviceArray<float> dev_probs(p.N * (p.K + 1)), dev_loss(1);
  dev_probs.poison();
  dev_loss.poison();
  cudaStream_t stream;
  GENREC_CUDA_CHECK(cudaStreamCreate(&stream));
  cuda::sampled_softmax_forward_async(ctx, dev_loss.get(), dev_probs.get(), d.query.get(),
                                      d.positive.get(), d.positive_ids.get(), d.negatives.get(),
                                      d.negative_ids.get(), p.N, p.K, p.D, p.temperature, stream);
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
  GENREC_CUDA_CHECK(cudaStreamDestroy(stream));
  const float loss = dev_loss.download()[0];
  EXPECT_EQ(loss, host_loss);  // same kernels and plans, deterministic reductions
  const std::vector<float> probs2 = dev_probs.download();
  EXPECT_EQ(0, std::memcmp(probs.data(), probs2.data(), probs.size() * sizeof(float)));
}

TEST(CudaSampledSoftmax, LogitsInTheThousandsStayFinite) {
  GENREC_REQUIRE_CUDA();
  cuda::GemmContext ctx;
  // Probabilities are only as accurate as the logits (an absolute logit error e is a relative
  // probability error e, here ~1e-4), so they are checked for being finite and normalised,
  // and the loss (~1e3) against the CPU op.
  SoftmaxProblem p = make_softmax_problem(8, 40, 16, 0.05f, 30.0f, 5);
  DeviceProblem d(p);
  std::vector<float> ref_probs, probs;
  const float ref_loss = cpu_softmax_forward(p, ref_probs);
  const float loss = cuda_forward(ctx, p, d, probs);
  EXPECT_GT(ref_loss, 100.0f);
  EXPECT_LT(rel_diff(loss, ref_loss), kCudaF32RelTol) << loss << " vs " << ref_loss;
  for (int64_t n = 0; n < p.N; ++n) {
    double sum = 0.0;
    for (int64_t k = 0; k <= p.K; ++k) {
      ASSERT_TRUE(std::isfinite(probs[n * (p.K + 1) + k]));
      sum += probs[n * (p.K + 1) + k];
    }
    EXPECT_NEAR(sum, 1.0, 1e-5) << "row " << n;
  }
}

// The backward of both ops from the same probs (the CPU forward's), gradients poisoned first.
TEST(CudaSampledSoftmax, BackwardMatchesCpu) {
  GENREC_REQUIRE_CUDA();
  cuda::GemmContext ctx;
  for (const Case& c : kCases) {
    SCOPED_TRACE(testing::Message()
                 << "N=" << c.N << " K=" << c.K << " D=" << c.D << " t=" << c.temperature);
    SoftmaxProblem p = make_softmax_problem(c.N, c.K, c.D, c.temperature, c.scale, 70 + c.N + c.K);
    DeviceProblem d(p);
    std::vector<float> probs;
    cpu_softmax_forward(p, probs);
    std::vector<float> dq(p.N * p.D), dp(p.N * p.D), dn(p.K * p.D);
    test::poison(dq);
    test::poison(dp);
    test::poison(dn);
    cpu::sampled_softmax_backward(dq.data(), dp.data(), dn.data(), probs.data(), p.query.data(),
                                  p.positive.data(), p.negatives.data(), p.N, p.K, p.D,
                                  p.temperature);
    auto dev_probs = test::upload<float>(probs);
    test::DeviceArray<float> gq(p.N * p.D), gp(p.N * p.D), gn(p.K * p.D);
    gq.poison();
    gp.poison();
    gn.poison();
    cuda::sampled_softmax_backward(ctx, gq.get(), gp.get(), gn.get(), dev_probs.get(),
                                   d.query.get(), d.positive.get(), d.negatives.get(), p.N, p.K,
                                   p.D, p.temperature, nullptr);
    EXPECT_LT(test::rel_l2(gq.download(), dq), kCudaF32RelTol) << "d_query";
    EXPECT_LT(test::rel_l2(gp.download(), dp), kCudaF32RelTol) << "d_positive";
    EXPECT_LT(test::rel_l2(gn.download(), dn), kCudaF32RelTol) << "d_negatives";
  }
}

TEST(CudaSampledSoftmax, EmptyBatch) {
  GENREC_REQUIRE_CUDA();
  cuda::GemmContext ctx;
  SoftmaxProblem p = make_softmax_problem(0, 6, 4, 1.0f, 1.0f, 3);
  DeviceProblem d(p);
  test::DeviceArray<int64_t> no_positive_ids(1);  // never read, but must be given when K > 0
  EXPECT_EQ(cuda::sampled_softmax_forward(ctx, nullptr, nullptr, nullptr, no_positive_ids.get(),
                                          d.negatives.get(), d.negative_ids.get(), 0, p.K, p.D,
                                          p.temperature, nullptr),
            0.0f);
  test::DeviceArray<float> gn(p.K * p.D);
  gn.poison();
  cuda::sampled_softmax_backward(ctx, nullptr, nullptr, gn.get(), nullptr, nullptr, nullptr,
                                 d.negatives.get(), 0, p.K, p.D, p.temperature, nullptr);
  EXPECT_EQ(gn.download(), std::vector<float>(p.K * p.D, 0.0f));
}

TEST(CudaSampledSoftmax, RejectsNonPositiveTemperature) {
  GENREC_REQUIRE_CUDA();
  cuda::GemmContext ctx;
  SoftmaxProblem p = make_softmax_problem(2, 3, 4, 1.0f, 1.0f, 41);
  DeviceProblem d(p);
  test::DeviceArray<float> probs(2 * 4);
  EXPECT_THROW(cuda::sampled_softmax_forward(ctx, probs.get(), d.query.get(), d.positive.get(),
                                             d.positive_ids.get(), d.negatives.get(),
                                             d.negative_ids.get(), 2, 3, 4, 0.0f, nullptr),
               Error);
}

}  // namespace
}  // namespace genrec
