#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/error.h"
#include "op_test_util.h"
#include "ops/adam.h"

namespace genrec {
namespace {

using test::kFp32RelTol;

// p is stored in fp32, so each of the 8 steps rounds it by up to 6e-8 |p|, against a total
// update of ~8 lr = 0.08: a few 1e-6 relative to the update (measured up to 4e-6).
constexpr double kUpdateRelTol = 3e-5;

void check_adam(bool decoupled, int64_t n) {
  SCOPED_TRACE(testing::Message() << "decoupled=" << decoupled << " n=" << n);
  cpu::AdamConfig cfg;
  cfg.lr = 1e-2f;
  cfg.beta1 = 0.9f;
  cfg.beta2 = 0.98f;
  cfg.eps = 1e-8f;
  cfg.weight_decay = 0.1f;
  cfg.decoupled = decoupled;
  auto p = test::random_normal(n, 1);
  std::vector<float> m(n, 0.0f), v(n, 0.0f);
  std::vector<double> rp(p.begin(), p.end()), rm(n, 0.0), rv(n, 0.0);
  for (int64_t step = 1; step <= 8; ++step) {
    auto g = test::random_normal(n, 100 + step);
    cpu::adam_update(p.data(), g.data(), m.data(), v.data(), n, cfg, step);
    const double b1 = cfg.beta1, b2 = cfg.beta2;
    for (int64_t i = 0; i < n; ++i) {
      double gi = g[i] + (decoupled ? 0.0 : cfg.weight_decay * rp[i]);
      rm[i] = b1 * rm[i] + (1 - b1) * gi;
      rv[i] = b2 * rv[i] + (1 - b2) * gi * gi;
      const double mhat = rm[i] / (1 - std::pow(b1, step));
      const double vhat = rv[i] / (1 - std::pow(b2, step));
      if (decoupled) rp[i] -= double(cfg.lr) * cfg.weight_decay * rp[i];
      rp[i] -= cfg.lr * mhat / (std::sqrt(vhat) + cfg.eps);
    }
  }
  // The parameters move by ~lr per step, so the error of the update itself is checked too.
  auto p0 = test::random_normal(n, 1);
  EXPECT_LT(test::rel_l2(test::difference(p, p0), test::difference(rp, p0)), kUpdateRelTol);
  EXPECT_LT(test::rel_l2(p, rp), kFp32RelTol);
  EXPECT_LT(test::rel_l2(m, rm), kFp32RelTol);
  EXPECT_LT(test::rel_l2(v, rv), kFp32RelTol);
}

TEST(OpsAdam, AdamWithL2MatchesReference) {
  check_adam(false, 37);
  check_adam(false, 50001);
}

TEST(OpsAdam, AdamWMatchesReference) {
  check_adam(true, 37);
  check_adam(true, 50001);
}

TEST(OpsAdam, RejectsStepZero) {
  std::vector<float> p(4), g(4), m(4), v(4);
  EXPECT_THROW(cpu::adam_update(p.data(), g.data(), m.data(), v.data(), 4, {}, 0), Error);
}

}  // namespace
}  // namespace genrec
