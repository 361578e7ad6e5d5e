#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "op_test_util.h"
#include "ops/layer_norm.h"

namespace genrec {
namespace {

using test::kFdRelTol;
using test::kFp32RelTol;

constexpr float kEps = 1e-5f;

struct Reference {
  std::vector<double> out, mean, rstd;
};

Reference forward_reference(const std::vector<float>& x, const float* w, const float* b, int64_t T,
                            int64_t C) {
  Reference r{std::vector<double>(T * C), std::vector<double>(T), std::vector<double>(T)};
  for (int64_t t = 0; t < T; ++t) {
    double m = 0.0, v = 0.0;
    for (int64_t c = 0; c < C; ++c) m += x[t * C + c];
    m /= C;
    for (int64_t c = 0; c < C; ++c) v += (x[t * C + c] - m) * (x[t * C + c] - m);
    const double rs = 1.0 / std::sqrt(v / C + kEps);
    for (int64_t c = 0; c < C; ++c) {
      double y = (x[t * C + c] - m) * rs;
      if (w != nullptr) y *= w[c];
      if (b != nullptr) y += b[c];
      r.out[t * C + c] = y;
    }
    r.mean[t] = m;
    r.rstd[t] = rs;
  }
  return r;
}

// Inputs with a row-dependent offset and scale, so that the mean and rstd matter.
std::vector<float> make_input(int64_t T, int64_t C, uint64_t seed) {
  auto x = test::random_normal(T * C, seed);
  auto shift = test::random_normal(T, seed + 1, 2.0f);
  auto scale = test::random_uniform(T, seed + 2, 0.5f, 3.0f);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t c = 0; c < C; ++c) x[t * C + c] = shift[t] + scale[t] * x[t * C + c];
  }
  return x;
}

TEST(OpsLayerNorm, ForwardMatchesReference) {
  for (auto [T, C] : {std::pair<int64_t, int64_t>{7, 24}, {400, 96}}) {
    auto x = make_input(T, C, 1);
    auto w = test::random_normal(C, 4, 0.5f, 1.0f), b = test::random_normal(C, 5);
    for (bool affine : {true, false}) {
      SCOPED_TRACE(testing::Message() << "T=" << T << " affine=" << affine);
      std::vector<float> out(T * C), mean(T), rstd(T);
      test::poison(out);
      test::poison(mean);
      test::poison(rstd);
      const float* wp = affine ? w.data() : nullptr;
      const float* bp = affine ? b.data() : nullptr;
      cpu::layer_norm_forward(out.data(), mean.data(), rstd.data(), x.data(), wp, bp, T, C, kEps);
      Reference ref = forward_reference(x, wp, bp, T, C);
      EXPECT_LT(test::rel_l2(out, ref.out), kFp32RelTol);
      EXPECT_LT(test::rel_l2(mean, ref.mean), kFp32RelTol);
      EXPECT_LT(test::rel_l2(rstd, ref.rstd), kFp32RelTol);
    }
  }
}

TEST(OpsLayerNorm, BackwardMatchesFiniteDifferences) {
  const int64_t T = 5, C = 12;
  auto x = make_input(T, C, 11);
  auto w = test::random_normal(C, 12, 0.5f, 1.0f), b = test::random_normal(C, 13);
  auto wts = test::random_weights(T * C, 14);
  for (bool affine : {true, false}) {
    SCOPED_TRACE(testing::Message() << "affine=" << affine);
    float* wp = affine ? w.data() : nullptr;
    float* bp = affine ? b.data() : nullptr;
    std::vector<float> out(T * C), mean(T), rstd(T);
    auto loss = [&] {
      cpu::layer_norm_forward(out.data(), mean.data(), rstd.data(), x.data(), wp, bp, T, C, kEps);
      return test::weighted_sum(out.data(), wts);
    };
    loss();
    std::vector<float> d_out(wts.begin(), wts.end()), d_x(T * C);
    test::poison(d_x);
    auto d_w0 = test::random_normal(C, 15), d_b0 = test::random_normal(C, 16);
    auto d_w = d_w0, d_b = d_b0;
    cpu::layer_norm_backward(d_x.data(), affine ? d_w.data() : nullptr,
                             affine ? d_b.data() : nullptr, d_out.data(), x.data(), wp, mean.data(),
                             rstd.data(), T, C);
    EXPECT_LT(test::rel_l2(d_x, test::fd_gradient(x, loss)), kFdRelTol);
    if (affine) {
      EXPECT_LT(test::rel_l2(test::difference(d_w, d_w0), test::fd_gradient(w, loss)), kFdRelTol);
      EXPECT_LT(test::rel_l2(test::difference(d_b, d_b0), test::fd_gradient(b, loss)), kFdRelTol);
    } else {
      EXPECT_EQ(d_w, d_w0);
      EXPECT_EQ(d_b, d_b0);
    }
  }
}

TEST(OpsLayerNorm, BackwardMatchesReferenceOnLargeInput) {
  const int64_t T = 500, C = 64;  // above the parallel threshold for rows and columns
  auto x = make_input(T, C, 21);
  auto w = test::random_normal(C, 22, 0.5f, 1.0f), b = test::random_normal(C, 23);
  auto d_out = test::random_normal(T * C, 24);
  std::vector<float> out(T * C), mean(T), rstd(T);
  cpu::layer_norm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), T, C,
                          kEps);
  Reference f = forward_reference(x, w.data(), b.data(), T, C);
  std::vector<double> ref_x(T * C), ref_w(C, 0.0), ref_b(C, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    double sum_g = 0.0, sum_gx = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      const double xhat = (x[t * C + c] - f.mean[t]) * f.rstd[t], g = d_out[t * C + c];
      ref_w[c] += g * xhat;
      ref_b[c] += g;
      sum_g += g * w[c];
      sum_gx += g * w[c] * xhat;
    }
    for (int64_t c = 0; c < C; ++c) {
      const double xhat = (x[t * C + c] - f.mean[t]) * f.rstd[t];
      ref_x[t * C + c] = f.rstd[t] * (d_out[t * C + c] * w[c] - sum_g / C - xhat * sum_gx / C);
    }
  }
  std::vector<float> d_x(T * C);
  test::poison(d_x);
  auto d_w0 = test::random_normal(C, 25), d_b0 = test::random_normal(C, 26);
  auto d_w = d_w0, d_b = d_b0;
  cpu::layer_norm_backward(d_x.data(), d_w.data(), d_b.data(), d_out.data(), x.data(), w.data(),
                           mean.data(), rstd.data(), T, C);
  EXPECT_LT(test::rel_l2(d_x, ref_x), kFp32RelTol);
  EXPECT_LT(test::rel_l2(test::difference(d_w, d_w0), ref_w), kFp32RelTol);
  EXPECT_LT(test::rel_l2(test::difference(d_b, d_b0), ref_b), kFp32RelTol);
}

}  // namespace
}  // namespace genrec
