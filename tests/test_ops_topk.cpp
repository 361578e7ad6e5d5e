#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/philox.h"
#include "op_test_util.h"
#include "ops/topk.h"

namespace genrec {
namespace {

// Scores drawn from a few integer values, so that ties are everywhere.
std::vector<float> tied_scores(int64_t n, uint64_t seed, int levels) {
  Philox rng(seed);
  std::vector<float> s(n);
  for (auto& x : s) x = static_cast<float>(rng.below(levels)) - 3.0f;
  return s;
}

TEST(OpsTopk, MatchesSortWithTiesByLowerIndex) {
  struct Case {
    int64_t R, n, k;
    int levels;
  };
  for (Case c : {Case{3, 10, 10, 4}, Case{5, 17, 1, 3}, Case{4, 50, 7, 6}, Case{40, 3000, 100, 50},
                 Case{2, 1000, 999, 1000000}}) {
    SCOPED_TRACE(testing::Message() << "R=" << c.R << " n=" << c.n << " k=" << c.k);
    auto scores = tied_scores(c.R * c.n, 1 + c.n, c.levels);
    std::vector<int64_t> idx(c.R * c.k, -1);
    std::vector<float> val(c.R * c.k);
    test::poison(val);
    cpu::topk(idx.data(), val.data(), scores.data(), c.R, c.n, c.k);
    for (int64_t r = 0; r < c.R; ++r) {
      const float* s = scores.data() + r * c.n;
      std::vector<int64_t> order(c.n);
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(),
                [&](int64_t a, int64_t b) { return s[a] > s[b] || (s[a] == s[b] && a < b); });
      for (int64_t i = 0; i < c.k; ++i) {
        ASSERT_EQ(idx[r * c.k + i], order[i]) << "row " << r << " rank " << i;
        ASSERT_EQ(val[r * c.k + i], s[order[i]]) << "row " << r << " rank " << i;
      }
    }
  }
}

TEST(OpsTopk, RejectsBadK) {
  std::vector<float> s(10);
  std::vector<int64_t> idx(20);
  std::vector<float> val(20);
  EXPECT_THROW(cpu::topk(idx.data(), val.data(), s.data(), 1, 10, 11), Error);
  EXPECT_THROW(cpu::topk(idx.data(), val.data(), s.data(), 1, 10, 0), Error);
}

TEST(OpsRankOfTarget, CountsStrictlyGreaterScores) {
  for (auto [R, n] : {std::pair<int64_t, int64_t>{6, 9}, {30, 2000}}) {
    auto scores = tied_scores(R * n, 7 + n, 5);
    Philox rng(3);
    std::vector<int64_t> target(R), ranks(R, -1);
    for (auto& t : target) t = static_cast<int64_t>(rng.below(n));
    cpu::rank_of_target(ranks.data(), scores.data(), target.data(), R, n);
    for (int64_t r = 0; r < R; ++r) {
      std::vector<float> sorted(scores.begin() + r * n, scores.begin() + (r + 1) * n);
      std::sort(sorted.begin(), sorted.end(), std::greater<>());
      const float t = scores[r * n + target[r]];
      const int64_t expected =
          std::lower_bound(sorted.begin(), sorted.end(), t, std::greater<>()) - sorted.begin();
      EXPECT_EQ(ranks[r], expected) << "row " << r;
    }
  }
  std::vector<float> s(4);
  std::vector<int64_t> bad = {4}, rank(1);
  EXPECT_THROW(cpu::rank_of_target(rank.data(), s.data(), bad.data(), 1, 4), Error);
}

}  // namespace
}  // namespace genrec
