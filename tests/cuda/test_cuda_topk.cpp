// CUDA top-k and target ranks against the CPU ops: selection is exact, so indices and value
// bits must be identical, ties (many), NaN, ±0 and ±inf included.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "core/error.h"
#include "cuda_test_util.h"
#include "ops/cuda/topk.h"
#include "ops/topk.h"

namespace genrec {
namespace {

// Scores and results are copied to and from the device raw (bit for bit) and poisoned with all
// bits set: NaN in fp32, -1 in int64.

// Scores from `levels` integer values (ties everywhere); with `specials`, about 1 in 16 is
// replaced by NaN, -0, +0, +inf or -inf.
std::vector<float> make_scores(int64_t n, uint64_t seed, uint64_t levels, bool specials) {
  Philox rng(seed);
  std::vector<float> s(n);
  const float kSpecial[] = {std::numeric_limits<float>::quiet_NaN(), -0.0f, 0.0f,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity()};
  for (auto& x : s) {
    x = static_cast<float>(rng.below(levels)) - 3.0f;
    if (levels > 1000) x = x / static_cast<float>(levels) + 0.25f * rng.normal();
    if (specials && rng.below(16) == 0) x = kSpecial[rng.below(5)];
  }
  return s;
}

struct Case {
  int64_t R, n, k;
  uint64_t levels;
  bool specials;
};

TEST(CudaTopk, MatchesCpu) {
  GENREC_REQUIRE_CUDA();
  for (Case c :
       {Case{3, 10, 10, 4, false}, Case{5, 17, 1, 3, false}, Case{4, 50, 45, 6, true},
        Case{40, 3000, 100, 50, true}, Case{2, 1000, 999, 1000000, false},
        Case{7, 5000, 1024, 1000000, true}, Case{256, 2048, 10, 20, true},
        Case{3, 200000, 257, 1000000, true}, Case{1, 1, 1, 2, false}, Case{9, 700, 64, 1, false}}) {
    SCOPED_TRACE(testing::Message() << "R=" << c.R << " n=" << c.n << " k=" << c.k);
    const auto scores = make_scores(c.R * c.n, 1 + c.n + c.k, c.levels, c.specials);
    std::vector<int64_t> ref_idx(c.R * c.k, -1);
    std::vector<float> ref_val(c.R * c.k);
    cpu::topk(ref_idx.data(), ref_val.data(), scores.data(), c.R, c.n, c.k);

    auto dev_scores = test::upload_raw(scores);
    test::DeviceArray<int64_t> idx(c.R * c.k);
    test::DeviceArray<float> val(c.R * c.k);
    idx.poison();
    val.poison();
    cuda::topk(idx.get(), val.get(), dev_scores.get(), c.R, c.n, c.k, nullptr);
    const auto got_idx = idx.download_raw();
    const auto got_val = val.download_raw();
    for (int64_t i = 0; i < c.R * c.k; ++i) {
      ASSERT_EQ(got_idx[i], ref_idx[i]) << "row " << i / c.k << " rank " << i % c.k;
      ASSERT_EQ(0, std::memcmp(&got_val[i], &ref_val[i], sizeof(float)))
          << "row " << i / c.k << " rank " << i % c.k << ": " << got_val[i] << " vs " << ref_val[i];
    }
  }
}

TEST(CudaTopk, RejectsBadK) {
  GENREC_REQUIRE_CUDA();
  test::DeviceArray<float> s(2000);
  test::DeviceArray<int64_t> idx(2000);
  test::DeviceArray<float> val(2000);
  EXPECT_THROW(cuda::topk(idx.get(), val.get(), s.get(), 1, 10, 11, nullptr), Error);
  EXPECT_THROW(cuda::topk(idx.get(), val.get(), s.get(), 1, 10, 0, nullptr), Error);
  EXPECT_THROW(cuda::topk(idx.get(), val.get(), s.get(), 1, 2000, cuda::kMaxTopk + 1, nullptr),
               Error);
}

TEST(CudaRankOfTarget, MatchesCpu) {
  GENREC_REQUIRE_CUDA();
  for (auto [R, n] : {std::pair<int64_t, int64_t>{6, 9}, {30, 2000}, {256, 5000}, {2, 300000}}) {
    SCOPED_TRACE(testing::Message() << "R=" << R << " n=" << n);
    const auto scores = make_scores(R * n, 7 + n, 5, true);
    Philox rng(3);
    std::vector<int64_t> target(R), ref(R, -1);
    for (auto& t : target) t = static_cast<int64_t>(rng.below(n));
    cpu::rank_of_target(ref.data(), scores.data(), target.data(), R, n);
    auto dev_scores = test::upload_raw(scores);
    auto dev_target = test::upload_raw(target);
    test::DeviceArray<int64_t> ranks(R);
    ranks.poison();
    cuda::rank_of_target(ranks.get(), dev_scores.get(), dev_target.get(), R, n, nullptr);
    EXPECT_EQ(ranks.download_raw(), ref);
  }
}

TEST(CudaRankOfTarget, OutOfRangeTargetGivesMinusOne) {
  GENREC_REQUIRE_CUDA();
  auto scores =
      test::upload_raw(std::vector<float>{1.0f, 3.0f, 2.0f, 0.0f, 4.0f, 5.0f, 6.0f, 7.0f});
  auto target = test::upload_raw(std::vector<int64_t>{4, 2});
  test::DeviceArray<int64_t> ranks(2);
  ranks.poison();
  cuda::rank_of_target(ranks.get(), scores.get(), target.get(), 2, 4, nullptr);
  EXPECT_EQ(ranks.download_raw(), (std::vector<int64_t>{-1, 1}));
}

}  // namespace
}  // namespace genrec
