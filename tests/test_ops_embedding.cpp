#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/philox.h"
#include "op_test_util.h"
#include "ops/embedding.h"

namespace genrec {
namespace {

using test::kFp32RelTol;

std::vector<int64_t> random_ids(int64_t n, int64_t num_rows, uint64_t seed) {
  Philox rng(seed);
  std::vector<int64_t> ids(n);
  for (auto& id : ids) id = static_cast<int64_t>(rng.below(num_rows));
  return ids;
}

TEST(OpsEmbedding, GatherCopiesRows) {
  for (auto [n, D] : {std::pair<int64_t, int64_t>{9, 5}, {3000, 48}}) {
    const int64_t rows = 257;
    auto table = test::random_normal(rows * D, 1);
    auto ids = random_ids(n, rows, 2);
    ids[0] = rows - 1;
    ids[1] = 0;
    std::vector<float> out(n * D);
    test::poison(out);
    cpu::embedding_gather(out.data(), table.data(), ids.data(), n, D, rows);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(0, std::memcmp(out.data() + i * D, table.data() + ids[i] * D, D * sizeof(float)))
          << "row " << i;
    }
  }
}

TEST(OpsEmbedding, ScatterAddAccumulatesDuplicatesDeterministically) {
  for (auto [n, D] : {std::pair<int64_t, int64_t>{20, 3}, {5000, 64}}) {
    SCOPED_TRACE(testing::Message() << "n=" << n << " D=" << D);
    const int64_t rows = 101;  // far fewer rows than ids: many duplicates
    auto ids = random_ids(n, rows, 10);
    auto d_out = test::random_normal(n * D, 11);
    auto d_table0 = test::random_normal(rows * D, 12);
    std::vector<double> ref(d_table0.begin(), d_table0.end());
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t d = 0; d < D; ++d) ref[ids[i] * D + d] += d_out[i * D + d];
    }
    auto d_table = d_table0;
    cpu::embedding_scatter_add(d_table.data(), d_out.data(), ids.data(), n, D, rows);
    EXPECT_LT(test::rel_l2(d_table, ref), kFp32RelTol);
    auto again = d_table0;
    cpu::embedding_scatter_add(again.data(), d_out.data(), ids.data(), n, D, rows);
    EXPECT_EQ(0, std::memcmp(again.data(), d_table.data(), rows * D * sizeof(float)));
    // The fixed order is the order of i: a sequential float loop gives the same bits.
    auto sequential = d_table0;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t d = 0; d < D; ++d) sequential[ids[i] * D + d] += d_out[i * D + d];
    }
    EXPECT_EQ(0, std::memcmp(sequential.data(), d_table.data(), rows * D * sizeof(float)));
  }
}

TEST(OpsEmbedding, RejectsOutOfRangeIdsNamingIdAndTableSize) {
  std::vector<float> table(10 * 4), out(3 * 4);
  for (int64_t bad : {int64_t{10}, int64_t{-1}, int64_t{123456}}) {
    std::vector<int64_t> ids = {1, bad, 2};
    try {
      cpu::embedding_gather(out.data(), table.data(), ids.data(), 3, 4, 10);
      ADD_FAILURE() << "no error for id " << bad;
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(std::to_string(bad)), std::string::npos) << msg;
      EXPECT_NE(msg.find("10"), std::string::npos) << msg;
    }
    auto before = table;
    EXPECT_THROW(cpu::embedding_scatter_add(table.data(), out.data(), ids.data(), 3, 4, 10), Error);
    EXPECT_EQ(table, before) << "nothing is written when an id is bad";
  }
}

}  // namespace
}  // namespace genrec
