#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/philox.h"
#include "op_test_util.h"
#include "ops/elementwise.h"

namespace genrec {
namespace {

using test::kFdRelTol;
using test::kFp32RelTol;

double sigmoid(double x) {
  return 1.0 / (1.0 + std::exp(-x));
}

// ---- SiLU ---------------------------------------------------------------------------------

TEST(OpsSilu, ForwardMatchesReference) {
  for (int64_t n : {int64_t{13}, int64_t{50000}}) {
    auto x = test::random_normal(n, 1, 3.0f);
    x[0] = -120.0f;  // exp overflow side
    x[1] = 95.0f;
    std::vector<double> ref(n);
    for (int64_t i = 0; i < n; ++i) ref[i] = x[i] * sigmoid(x[i]);
    std::vector<float> out(n);
    test::poison(out);
    cpu::silu_forward(out.data(), x.data(), n);
    EXPECT_LT(test::rel_l2(out, ref), kFp32RelTol) << "n=" << n;
    cpu::silu_forward(x.data(), x.data(), n);  // in place
    EXPECT_EQ(0, std::memcmp(x.data(), out.data(), n * sizeof(float)));
  }
}

TEST(OpsSilu, BackwardMatchesFiniteDifferencesAndReference) {
  const int64_t n = 40;
  auto x = test::random_normal(n, 2, 2.0f);
  auto wts = test::random_weights(n, 3);
  std::vector<float> out(n);
  auto loss = [&] {
    cpu::silu_forward(out.data(), x.data(), n);
    return test::weighted_sum(out.data(), wts);
  };
  std::vector<float> d_out(wts.begin(), wts.end()), d_x(n);
  test::poison(d_x);
  cpu::silu_backward(d_x.data(), d_out.data(), x.data(), n);
  EXPECT_LT(test::rel_l2(d_x, test::fd_gradient(x, loss)), kFdRelTol);

  const int64_t big = 70001;
  auto xb = test::random_normal(big, 4, 3.0f), gb = test::random_normal(big, 5);
  std::vector<double> ref(big);
  for (int64_t i = 0; i < big; ++i) {
    const double s = sigmoid(xb[i]);
    ref[i] = gb[i] * s * (1.0 + xb[i] * (1.0 - s));
  }
  cpu::silu_backward(gb.data(), gb.data(), xb.data(), big);  // d_in == d_out allowed
  EXPECT_LT(test::rel_l2(gb, ref), kFp32RelTol);
}

// ---- gate ---------------------------------------------------------------------------------

TEST(OpsGate, ForwardAndBackwardWithStridedU) {
  for (auto [T, C] : {std::pair<int64_t, int64_t>{6, 5}, {700, 64}}) {
    SCOPED_TRACE(testing::Message() << "T=" << T);
    const int64_t ldu = 3 * C + 2, u_col = C + 1;  // u is a column slice of a wider buffer
    auto x = test::random_normal(T * C, 10), ubuf = test::random_normal(T * ldu, 11);
    const float* u = ubuf.data() + u_col;
    std::vector<float> out(T * C);
    test::poison(out);
    cpu::gate_forward(out.data(), x.data(), u, ldu, T, C);
    std::vector<double> ref(T * C);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t c = 0; c < C; ++c) ref[t * C + c] = double(x[t * C + c]) * u[t * ldu + c];
    }
    EXPECT_LT(test::rel_l2(out, ref), kFp32RelTol);

    auto d_out = test::random_normal(T * C, 12);
    std::vector<float> d_x(T * C), d_ubuf(T * ldu);
    test::poison(d_x);
    test::poison(d_ubuf);
    cpu::gate_backward(d_x.data(), d_ubuf.data() + u_col, d_out.data(), x.data(), u, ldu, T, C);
    std::vector<double> ref_x(T * C), ref_u(T * C);
    std::vector<float> got_u(T * C);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t j = 0; j < ldu; ++j) {
        const bool in_slice = j >= u_col && j < u_col + C;
        if (!in_slice) {
          ASSERT_TRUE(std::isnan(d_ubuf[t * ldu + j])) << "wrote outside d_u slice";
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        ref_x[t * C + c] = double(d_out[t * C + c]) * u[t * ldu + c];
        ref_u[t * C + c] = double(d_out[t * C + c]) * x[t * C + c];
        got_u[t * C + c] = d_ubuf[t * ldu + u_col + c];
      }
    }
    EXPECT_LT(test::rel_l2(d_x, ref_x), kFp32RelTol);
    EXPECT_LT(test::rel_l2(got_u, ref_u), kFp32RelTol);
  }
}

TEST(OpsGate, BackwardMatchesFiniteDifferences) {
  const int64_t T = 4, C = 6, ldu = 2 * C + 1;
  auto x = test::random_normal(T * C, 20), ubuf = test::random_normal(T * ldu, 21);
  float* u = ubuf.data() + 1;
  auto wts = test::random_weights(T * C, 22);
  std::vector<float> out(T * C);
  auto loss = [&] {
    cpu::gate_forward(out.data(), x.data(), u, ldu, T, C);
    return test::weighted_sum(out.data(), wts);
  };
  std::vector<float> d_out(wts.begin(), wts.end()), d_x(T * C), d_ubuf(T * ldu, 0.0f);
  test::poison(d_x);
  cpu::gate_backward(d_x.data(), d_ubuf.data() + 1, d_out.data(), x.data(), u, ldu, T, C);
  EXPECT_LT(test::rel_l2(d_x, test::fd_gradient(x, loss)), kFdRelTol);
  // The gradient of every element of the u buffer: zero outside the slice.
  EXPECT_LT(test::rel_l2(d_ubuf, test::fd_gradient(ubuf, loss)), kFdRelTol);
}

// ---- L2 normalisation ---------------------------------------------------------------------

TEST(OpsL2Normalize, ForwardMatchesReferenceIncludingClampedRows) {
  const float eps = 1e-3f;
  for (auto [T, C] : {std::pair<int64_t, int64_t>{5, 9}, {600, 50}}) {
    auto x = test::random_normal(T * C, 30);
    for (int64_t c = 0; c < C; ++c) x[2 * C + c] *= 1e-5f;  // norm below eps
    for (int64_t c = 0; c < C; ++c) x[3 * C + c] = 0.0f;
    std::vector<float> out(T * C), inv(T);
    test::poison(out);
    test::poison(inv);
    cpu::l2_normalize_forward(out.data(), inv.data(), x.data(), T, C, eps);
    std::vector<double> ref(T * C), ref_inv(T);
    for (int64_t t = 0; t < T; ++t) {
      double sq = 0.0;
      for (int64_t c = 0; c < C; ++c) sq += double(x[t * C + c]) * x[t * C + c];
      ref_inv[t] = 1.0 / std::max(std::sqrt(sq), double(eps));
      for (int64_t c = 0; c < C; ++c) ref[t * C + c] = x[t * C + c] * ref_inv[t];
    }
    EXPECT_LT(test::rel_l2(out, ref), kFp32RelTol) << "T=" << T;
    EXPECT_LT(test::rel_l2(inv, ref_inv), kFp32RelTol) << "T=" << T;
  }
}

TEST(OpsL2Normalize, BackwardMatchesFiniteDifferencesAndReference) {
  const float eps = 1e-3f;
  const int64_t T = 4, C = 7;
  auto x = test::random_normal(T * C, 40);
  // Row 1 gets norm eps/2: clamped, so d_x = d_out / eps there.
  double sq = 0.0;
  for (int64_t c = 0; c < C; ++c) sq += double(x[C + c]) * x[C + c];
  for (int64_t c = 0; c < C; ++c) x[C + c] *= static_cast<float>(0.5 * eps / std::sqrt(sq));
  auto wts = test::random_weights(T * C, 41);
  std::vector<float> out(T * C), inv(T);
  auto loss = [&] {
    cpu::l2_normalize_forward(out.data(), inv.data(), x.data(), T, C, eps);
    return test::weighted_sum(out.data(), wts);
  };
  loss();
  std::vector<float> d_out(wts.begin(), wts.end()), d_x(T * C);
  test::poison(d_x);
  cpu::l2_normalize_backward(d_x.data(), d_out.data(), out.data(), inv.data(), T, C);
  for (int64_t t = 0; t < T; ++t) {
    // Rows differ in gradient scale by 1/eps, so each is checked on its own; the clamped row
    // takes a step far below its distance eps/2 to the kink.
    auto fd = test::fd_gradient(x.data() + t * C, C, loss, t == 1 ? 2e-5f : test::kFdStep);
    EXPECT_LT(test::rel_l2(d_x.data() + t * C, fd.data(), C), kFdRelTol) << "row " << t;
  }

  const int64_t TB = 900, CB = 40;
  auto xb = test::random_normal(TB * CB, 42), gb = test::random_normal(TB * CB, 43);
  std::vector<float> ob(TB * CB), ib(TB), db(TB * CB);
  test::poison(db);
  cpu::l2_normalize_forward(ob.data(), ib.data(), xb.data(), TB, CB, eps);
  cpu::l2_normalize_backward(db.data(), gb.data(), ob.data(), ib.data(), TB, CB);
  std::vector<double> ref(TB * CB);
  for (int64_t t = 0; t < TB; ++t) {
    double sq = 0.0, dot = 0.0;
    for (int64_t c = 0; c < CB; ++c) sq += double(xb[t * CB + c]) * xb[t * CB + c];
    const double n = std::sqrt(sq);
    for (int64_t c = 0; c < CB; ++c) dot += xb[t * CB + c] / n * gb[t * CB + c];
    for (int64_t c = 0; c < CB; ++c) {
      ref[t * CB + c] = (gb[t * CB + c] - xb[t * CB + c] / n * dot) / n;
    }
  }
  EXPECT_LT(test::rel_l2(db, ref), kFp32RelTol);
}

// ---- dropout ------------------------------------------------------------------------------

TEST(OpsDropout, MaskMatchesPhiloxAndDropsAboutP) {
  const int64_t n = 200003;  // odd, above the parallel threshold: chunk edges inside a block
  const float p = 0.3f;
  const uint64_t seed = 1234, offset = 77;
  auto x = test::random_normal(n, 50);
  std::vector<float> out(n);
  test::poison(out);
  cpu::dropout_forward(out.data(), x.data(), n, p, seed, offset);
  std::vector<double> ref(n);
  int64_t dropped = 0;
  for (int64_t i = 0; i < n; ++i) {
    const bool keep = philox_uniform(seed, offset, i) >= p;
    ref[i] = keep ? x[i] / (1.0 - p) : 0.0;
    if (!keep) {
      ++dropped;
      ASSERT_EQ(out[i], 0.0f) << "element " << i;
    }
  }
  EXPECT_LT(test::rel_l2(out, ref), kFp32RelTol);
  // Binomial(n, p): standard deviation sqrt(p(1-p)/n) = 0.001 of the fraction; 0.006 is 6 sigma.
  EXPECT_NEAR(static_cast<double>(dropped) / n, p, 0.006);

  auto g = test::random_normal(n, 51);
  std::vector<float> d_x(n);
  test::poison(d_x);
  cpu::dropout_backward(d_x.data(), g.data(), n, p, seed, offset);
  for (int64_t i = 0; i < n; ++i) {
    ref[i] = philox_uniform(seed, offset, i) >= p ? g[i] / (1.0 - p) : 0.0;
  }
  EXPECT_LT(test::rel_l2(d_x, ref), kFp32RelTol);

  // Another offset gives another mask; in place gives the same result.
  std::vector<float> other(n);
  cpu::dropout_forward(other.data(), x.data(), n, p, seed, offset + 1);
  EXPECT_NE(0, std::memcmp(other.data(), out.data(), n * sizeof(float)));
  cpu::dropout_forward(x.data(), x.data(), n, p, seed, offset);
  EXPECT_EQ(0, std::memcmp(x.data(), out.data(), n * sizeof(float)));
}

TEST(OpsDropout, ZeroProbabilityCopiesAndBadProbabilityThrows) {
  auto x = test::random_normal(1000, 60);
  std::vector<float> out(1000);
  test::poison(out);
  cpu::dropout_forward(out.data(), x.data(), 1000, 0.0f, 1, 2);
  EXPECT_EQ(out, x);
  EXPECT_THROW(cpu::dropout_forward(out.data(), x.data(), 1000, 1.5f, 1, 2), Error);
  EXPECT_THROW(cpu::dropout_forward(out.data(), x.data(), 1000, -0.1f, 1, 2), Error);
}

TEST(OpsDropout, BackwardMatchesFiniteDifferences) {
  const int64_t n = 37;
  const float p = 0.4f;
  auto x = test::random_normal(n, 70);
  auto wts = test::random_weights(n, 71);
  std::vector<float> out(n);
  auto loss = [&] {
    cpu::dropout_forward(out.data(), x.data(), n, p, 9, 3);
    return test::weighted_sum(out.data(), wts);
  };
  std::vector<float> d_out(wts.begin(), wts.end()), d_x(n);
  test::poison(d_x);
  cpu::dropout_backward(d_x.data(), d_out.data(), n, p, 9, 3);
  EXPECT_LT(test::rel_l2(d_x, test::fd_gradient(x, loss)), kFdRelTol);
}

}  // namespace
}  // namespace genrec
