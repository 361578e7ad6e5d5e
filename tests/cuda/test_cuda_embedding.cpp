// CUDA embedding gather and sort-based scatter-add against the CPU ops. Both are exact: the
// gather copies (and rounds to bf16 like the host), and the scatter-add sums each table row's
// gradients in the CPU's order, so the fp32 table must equal the CPU's bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "core/cuda/stream.h"
#include "cuda_test_util.h"
#include "ops/cuda/embedding.h"
#include "ops/embedding.h"

namespace genrec {
namespace {

template <typename T>
class CudaEmbeddingTest : public testing::Test {};
using Types = testing::Types<float, __nv_bfloat16>;
TYPED_TEST_SUITE(CudaEmbeddingTest, Types);

// n ids in [0, num_rows): half from a few popular rows (long runs of duplicates), half uniform.
std::vector<int64_t> make_ids(int64_t n, int64_t num_rows, uint64_t seed) {
  Philox rng(seed);
  std::vector<int64_t> ids(n);
  const uint64_t popular = std::min<int64_t>(num_rows, 5);
  for (auto& id : ids) {
    id = static_cast<int64_t>(rng.below(2) == 0 ? rng.below(popular) : rng.below(num_rows));
  }
  return ids;
}

test::DeviceArray<int64_t> upload_ids(const std::vector<int64_t>& ids) {
  test::DeviceArray<int64_t> d(static_cast<int64_t>(ids.size()));
  if (!ids.empty()) {
    GENREC_CUDA_CHECK(
        cudaMemcpy(d.get(), ids.data(), ids.size() * sizeof(int64_t), cudaMemcpyHostToDevice));
  }
  return d;
}

TYPED_TEST(CudaEmbeddingTest, GatherMatchesCpuExactly) {
  GENREC_REQUIRE_CUDA();
  using T = TypeParam;
  uint64_t seed = 1;
  for (int64_t B : test::batch_sizes()) {
    const int64_t n = test::total_tokens(test::jagged_lengths(B, 50, seed));
    for (int64_t D : {int64_t{1}, int64_t{33}, int64_t{64}, int64_t{200}}) {
      SCOPED_TRACE(testing::Message() << test::type_name<T>() << " n=" << n << " D=" << D);
      const int64_t rows = 1000;
      auto table = test::random_normal(rows * D, seed += 3);
      auto ids = make_ids(n, rows, seed + 1);
      std::vector<float> out(n * D);
      cpu::embedding_gather(out.data(), table.data(), ids.data(), n, D, rows);
      auto d_table = test::upload<float>(table);
      auto d_ids = upload_ids(ids);
      test::DeviceArray<T> d_out(n * D);
      d_out.poison();
      cuda::embedding_gather<T>(d_out.get(), d_table.get(), d_ids.get(), n, D, rows, nullptr);
      EXPECT_EQ(d_out.download(), test::round_through<T>(out));
    }
  }
}

TYPED_TEST(CudaEmbeddingTest, ScatterAddMatchesCpuBitForBit) {
  GENREC_REQUIRE_CUDA();
  using T = TypeParam;
  uint64_t seed = 100;
  for (int64_t B : test::batch_sizes()) {
    const int64_t n = test::total_tokens(test::jagged_lengths(B, 50, seed));
    for (auto [D, rows] :
         {std::pair<int64_t, int64_t>{1, 3}, {33, 1000}, {64, 100000}, {200, 50}}) {
      SCOPED_TRACE(testing::Message()
                   << test::type_name<T>() << " n=" << n << " D=" << D << " rows=" << rows);
      auto d_table_host = test::random_normal(rows * D, seed += 3);  // accumulated into
      auto grads = test::round_through<T>(test::random_normal(n * D, seed + 1));
      auto ids = make_ids(n, rows, seed + 2);
      auto d_table = test::upload<float>(d_table_host);
      auto d_grads = test::upload<T>(grads);
      auto d_ids = upload_ids(ids);
      cpu::embedding_scatter_add(d_table_host.data(), grads.data(), ids.data(), n, D, rows);
      cuda::embedding_scatter_add<T>(d_table.get(), d_grads.get(), d_ids.get(), n, D, rows,
                                     nullptr);
      auto got = d_table.download();
      ASSERT_EQ(got.size(), d_table_host.size());
      EXPECT_EQ(0, std::memcmp(got.data(), d_table_host.data(), got.size() * sizeof(float)))
          << "rel_l2 " << test::rel_l2(got, d_table_host);
    }
  }
}

TEST(CudaEmbedding, ScatterAddOnAStreamWithOneHugeRun) {
  GENREC_REQUIRE_CUDA();
  const int64_t n = 70000, D = 48, rows = 10;
  std::vector<int64_t> ids(n, 7);  // every gradient goes to one row
  ids[5] = 2;
  auto table = test::random_normal(rows * D, 1);
  auto grads = test::random_normal(n * D, 2, 0.01f);
  auto d_table = test::upload<float>(table);
  auto d_grads = test::upload<float>(grads);
  auto d_ids = upload_ids(ids);
  cuda::Stream stream;
  cuda::embedding_scatter_add<float>(d_table.get(), d_grads.get(), d_ids.get(), n, D, rows, stream);
  stream.synchronize();
  cpu::embedding_scatter_add(table.data(), grads.data(), ids.data(), n, D, rows);
  auto got = d_table.download();
  EXPECT_EQ(0, std::memcmp(got.data(), table.data(), got.size() * sizeof(float)));
}

TEST(CudaEmbedding, OutOfRangeIdsAreReportedAndNeverTouchMemory) {
  GENREC_REQUIRE_CUDA();
  const int64_t rows = 4, D = 3;
  std::vector<int64_t> ids = {0, 3, 4, -1, 2};
  auto table = test::random_normal(rows * D, 5);
  auto d_table = test::upload<float>(table);
  auto d_ids = upload_ids(ids);
  try {
    cuda::embedding_check_ids(d_ids.get(), 5, rows, nullptr);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("embedding id 4 (position 2)"), std::string::npos) << message;
    EXPECT_NE(message.find("4 rows"), std::string::npos) << message;
  }
  cuda::embedding_check_ids(d_ids.get(), 2, rows, nullptr);  // the first two are fine

  // Gather: zero rows for bad ids; scatter: bad ids skipped, good ones applied.
  test::DeviceArray<float> out(5 * D);
  out.poison();
  cuda::embedding_gather<float>(out.get(), d_table.get(), d_ids.get(), 5, D, rows, nullptr);
  auto got = out.download();
  for (int64_t c = 0; c < D; ++c) {
    EXPECT_EQ(got[0 * D + c], table[0 * D + c]);
    EXPECT_EQ(got[2 * D + c], 0.0f);
    EXPECT_EQ(got[3 * D + c], 0.0f);
    EXPECT_EQ(got[4 * D + c], table[2 * D + c]);
  }
  auto grads = std::vector<float>(5 * D, 1.0f);
  auto d_grads = test::upload<float>(grads);
  cuda::embedding_scatter_add<float>(d_table.get(), d_grads.get(), d_ids.get(), 5, D, rows,
                                     nullptr);
  auto after = d_table.download();
  for (int64_t r = 0; r < rows; ++r) {
    const float added = (r == 0 || r == 2 || r == 3) ? 1.0f : 0.0f;
    for (int64_t c = 0; c < D; ++c) EXPECT_EQ(after[r * D + c], table[r * D + c] + added);
  }
}

}  // namespace
}  // namespace genrec
