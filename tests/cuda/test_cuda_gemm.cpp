// CUDA GEMM and linear layer (cuBLASLt) against the CPU ops on the same inputs, for fp32 and
// bf16, all transposes, padded strides, jagged token counts from batches of 1 to 256 sequences.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/cuda/stream.h"
#include "cuda_test_util.h"
#include "ops/cuda/gemm.h"
#include "ops/gemm.h"

namespace genrec {
namespace {

using test::kCudaF32RelTol;

template <typename T>
class CudaGemmTest : public testing::Test {};
using Types = testing::Types<float, __nv_bfloat16>;
TYPED_TEST_SUITE(CudaGemmTest, Types);

// Runs one product on both sides and compares the written block; C's padding must survive.
template <typename T>
void check_gemm(cuda::GemmContext& ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                float alpha, float beta, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << test::type_name<T>() << " ta=" << ta << " tb=" << tb
                                  << " M=" << M << " N=" << N << " K=" << K << " beta=" << beta);
  const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 2;
  auto A = test::round_through<T>(test::random_normal((ta ? K : M) * lda, seed));
  auto B = test::round_through<T>(test::random_normal((tb ? N : K) * ldb, seed + 1));
  auto C = test::round_through<T>(test::random_normal(M * ldc, seed + 2));
  if (beta == 0.0f) {
    // Poison the block gemm must write; padding keeps its random values.
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = std::nanf("");
    }
  }
  auto dA = test::upload<T>(A);
  auto dB = test::upload<T>(B);
  auto dC = test::upload<T>(C);
  std::vector<float> ref = C;
  cpu::gemm(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, ref.data(), ldc);
  cuda::gemm<T>(ctx, ta, tb, M, N, K, alpha, dA.get(), lda, dB.get(), ldb, beta, dC.get(), ldc,
                nullptr);
  auto got = dC.download();
  std::vector<float> got_block, ref_block;
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < ldc; ++j) {
      if (j < N) {
        got_block.push_back(got[i * ldc + j]);
        ref_block.push_back(ref[i * ldc + j]);
      } else {
        ASSERT_EQ(got[i * ldc + j], C[i * ldc + j]) << "padding of row " << i;
      }
    }
  }
  EXPECT_LT(test::rel_l2(got_block, ref_block), test::rel_tol<T>());
}

TYPED_TEST(CudaGemmTest, MatchesCpuForAllTransposesAndStrides) {
  GENREC_REQUIRE_CUDA();
  cuda::GemmContext ctx;
  uint64_t seed = 100;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      for (float beta : {0.0f, 1.0f, -0.6f}) {
        check_gemm<TypeParam>(ctx, ta, tb, 37, 29, 53, 0.7f, beta, seed += 3);
        check_gemm<TypeParam>(ctx, ta, tb, 1, 5, 1, -1.5f, beta, seed += 3);
        check_gemm<TypeParam>(ctx, ta, tb, 128, 96, 64, 1.0f, beta, seed += 3);
      }
    }
  }
  check_gemm<TypeParam>(ctx, false, true, 300, 260, 1024, 1.0f, 0.0f, 7);
  check_gemm<TypeParam>(ctx, true, false, 260, 300, 280, 0.5f, 1.0f, 8);
}

TYPED_TEST(CudaGemmTest, EmptyInnerDimensionOrZeroAlphaScalesC) {
  GENREC_REQUIRE_CUDA();
  using T = TypeParam;
  cuda::GemmContext ctx;
  test::DeviceArray<T> C(6);
  C.poison();
  cuda::gemm<T>(ctx, false, false, 2, 3, 0, 1.0f, nullptr, 1, nullptr, 3, 0.0f, C.get(), 3,
                nullptr);
  EXPECT_EQ(C.download(), std::vector<float>(6, 0.0f));
  C.upload({1, 2, 3, 4, 5, 6});
  cuda::gemm<T>(ctx, true, true, 2, 3, 0, 1.0f, nullptr, 2, nullptr, 1, 2.0f, C.get(), 3, nullptr);
  EXPECT_EQ(C.download(), (std::vector<float>{2, 4, 6, 8, 10, 12}));
  auto A = test::upload<T>(std::vector<float>(8, std::nanf("")));
  cuda::gemm<T>(ctx, false, false, 2, 3, 4, 0.0f, A.get(), 4, A.get(), 3, 0.5f, C.get(), 3,
                nullptr);
  EXPECT_EQ(C.download(), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  // M or N of zero does nothing at all.
  cuda::gemm<T>(ctx, false, false, 0, 3, 4, 1.0f, nullptr, 4, nullptr, 3, 0.0f, nullptr, 3,
                nullptr);
}

TEST(CudaGemm, RejectsShortLeadingDimensionAndWrongDevice) {
  GENREC_REQUIRE_CUDA();
  cuda::GemmContext ctx;
  test::DeviceArray<float> a(100), b(100), c(100);
  EXPECT_THROW(cuda::gemm<float>(ctx, false, false, 4, 5, 6, 1.0f, a.get(), 5, b.get(), 5, 0.0f,
                                 c.get(), 5, nullptr),
               Error);  // lda 5 < K 6
  EXPECT_THROW(cuda::gemm<float>(ctx, false, false, 4, 5, 6, 1.0f, a.get(), 6, b.get(), 5, 0.0f,
                                 c.get(), 4, nullptr),
               Error);  // ldc 4 < N 5
}

TEST(CudaGemm, AccumulateF32FromBf16MatchesCpu) {
  GENREC_REQUIRE_CUDA();
  cuda::GemmContext ctx;
  for (auto [ta, tb] : {std::pair{true, false}, {false, false}, {false, true}, {true, true}}) {
    const int64_t M = 96, N = 80, K = 700;
    SCOPED_TRACE(testing::Message() << "ta=" << ta << " tb=" << tb);
    const int64_t lda = ta ? M : K, ldb = tb ? K : N;
    auto A = test::round_through<__nv_bfloat16>(test::random_normal(M * K, 1));
    auto B = test::round_through<__nv_bfloat16>(test::random_normal(K * N, 2));
    auto C = test::random_normal(M * N, 3);
    auto dA = test::upload<__nv_bfloat16>(A);
    auto dB = test::upload<__nv_bfloat16>(B);
    auto dC = test::upload<float>(C);
    cpu::gemm(ta, tb, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, 1.0f, C.data(), N);
    cuda::gemm_accumulate_f32(ctx, ta, tb, M, N, K, 1.0f, dA.get(), lda, dB.get(), ldb, 1.0f,
                              dC.get(), N, nullptr);
    // bf16 inputs are exact in fp32 and their products too: only summation order differs.
    EXPECT_LT(test::rel_l2(dC.download(), C), kCudaF32RelTol);
  }
}

// ---- linear layer -------------------------------------------------------------------------

template <typename T>
void check_linear_forward(cuda::GemmContext& ctx, int64_t tokens, int64_t IC, int64_t OC,
                          bool with_bias, bool misaligned_bias, uint64_t seed,
                          cudaStream_t stream = nullptr) {
  SCOPED_TRACE(testing::Message() << test::type_name<T>() << " tokens=" << tokens << " IC=" << IC
                                  << " OC=" << OC << " bias=" << with_bias
                                  << " misaligned=" << misaligned_bias);
  auto in = test::round_through<T>(test::random_normal(tokens * IC, seed));
  auto w = test::round_through<T>(test::random_normal(IC * OC, seed + 1, 0.2f));
  auto bias_store = test::random_normal(OC + 1, seed + 2);
  auto d_in = test::upload<T>(in);
  auto d_w = test::upload<T>(w);
  auto d_bias = test::upload<float>(bias_store);
  const float* bias = with_bias ? bias_store.data() + (misaligned_bias ? 1 : 0) : nullptr;
  const float* d_bias_ptr = with_bias ? d_bias.get() + (misaligned_bias ? 1 : 0) : nullptr;
  test::DeviceArray<T> d_out(tokens * OC);
  d_out.poison();
  std::vector<float> ref(tokens * OC);
  cpu::linear_forward(ref.data(), in.data(), w.data(), bias, tokens, IC, OC);
  cuda::linear_forward<T>(ctx, d_out.get(), d_in.get(), d_w.get(), d_bias_ptr, tokens, IC, OC,
                          stream);
  if (stream != nullptr) GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
  EXPECT_LT(test::rel_l2(d_out.download(), ref), test::rel_tol<T>());
}

TYPED_TEST(CudaGemmTest, LinearForwardMatchesCpuOnJaggedBatches) {
  GENREC_REQUIRE_CUDA();
  cuda::GemmContext ctx;
  uint64_t seed = 1000;
  for (int64_t B : test::batch_sizes()) {
    const int64_t tokens = test::total_tokens(test::jagged_lengths(B, 40, seed));
    for (bool bias : {true, false}) {
      check_linear_forward<TypeParam>(ctx, tokens, 64, 96, bias, false, seed += 7);
      check_linear_forward<TypeParam>(ctx, tokens, 50, 37, bias, false, seed += 7);
    }
    check_linear_forward<TypeParam>(ctx, tokens, 64, 96, true, true, seed += 7);
  }
  check_linear_forward<TypeParam>(ctx, 4096, 512, 256, true, false, seed += 7);
  cuda::Stream stream;
  check_linear_forward<TypeParam>(ctx, 777, 128, 192, true, false, seed += 7, stream);
}

template <typename T>
void check_linear_backward(cuda::GemmContext& ctx, int64_t tokens, int64_t IC, int64_t OC,
                           bool want_d_in, bool want_d_bias, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << test::type_name<T>() << " tokens=" << tokens << " IC=" << IC
                                  << " OC=" << OC << " d_in=" << want_d_in
                                  << " d_bias=" << want_d_bias);
  auto in = test::round_through<T>(test::random_normal(tokens * IC, seed));
  auto w = test::round_through<T>(test::random_normal(IC * OC, seed + 1, 0.2f));
  auto g = test::round_through<T>(test::random_normal(tokens * OC, seed + 2));
  auto dw = test::random_normal(IC * OC, seed + 3);  // accumulated into
  auto db = test::random_normal(OC, seed + 4);
  auto d_in_dev = test::upload<T>(in);
  auto w_dev = test::upload<T>(w);
  auto g_dev = test::upload<T>(g);
  auto dw_dev = test::upload<float>(dw);
  auto db_dev = test::upload<float>(db);
  test::DeviceArray<T> dx_dev(tokens * IC);
  dx_dev.poison();
  std::vector<float> dx(tokens * IC);
  cpu::linear_backward(want_d_in ? dx.data() : nullptr, dw.data(),
                       want_d_bias ? db.data() : nullptr, g.data(), in.data(), w.data(), tokens, IC,
                       OC);
  cuda::linear_backward<T>(ctx, want_d_in ? dx_dev.get() : nullptr, dw_dev.get(),
                           want_d_bias ? db_dev.get() : nullptr, g_dev.get(), d_in_dev.get(),
                           w_dev.get(), tokens, IC, OC, nullptr);
  if (want_d_in) {
    EXPECT_LT(test::rel_l2(dx_dev.download(), dx), test::rel_tol<T>()) << "d_in";
  }
  // fp32 outputs of identical (bf16-exact) inputs: only summation order differs.
  EXPECT_LT(test::rel_l2(dw_dev.download(), dw), kCudaF32RelTol) << "d_weight";
  EXPECT_LT(test::rel_l2(db_dev.download(), db), kCudaF32RelTol) << "d_bias";
}

TYPED_TEST(CudaGemmTest, LinearBackwardMatchesCpuOnJaggedBatches) {
  GENREC_REQUIRE_CUDA();
  cuda::GemmContext ctx;
  uint64_t seed = 2000;
  for (int64_t B : test::batch_sizes()) {
    const int64_t tokens = test::total_tokens(test::jagged_lengths(B, 40, seed));
    check_linear_backward<TypeParam>(ctx, tokens, 64, 96, true, true, seed += 7);
    check_linear_backward<TypeParam>(ctx, tokens, 50, 37, true, true, seed += 7);
    check_linear_backward<TypeParam>(ctx, tokens, 64, 96, false, false, seed += 7);
  }
  check_linear_backward<TypeParam>(ctx, 5000, 256, 130, true, true, seed += 7);
}

TEST(CudaLinear, BiasGradientIsDeterministic) {
  GENREC_REQUIRE_CUDA();
  cuda::GemmContext ctx;
  const int64_t tokens = 20000, IC = 16, OC = 70;
  auto in = test::upload<float>(test::random_normal(tokens * IC, 1));
  auto w = test::upload<float>(test::random_normal(IC * OC, 2));
  auto g = test::upload<float>(test::random_normal(tokens * OC, 3));
  std::vector<std::vector<float>> runs;
  for (int r = 0; r < 3; ++r) {
    test::DeviceArray<float> db(OC);
    db.upload(std::vector<float>(OC, 0.5f));
    cuda::linear_backward<float>(ctx, nullptr, nullptr, db.get(), g.get(), in.get(), w.get(),
                                 tokens, IC, OC, nullptr);
    runs.push_back(db.download());
  }
  EXPECT_EQ(runs[0], runs[1]);
  EXPECT_EQ(runs[0], runs[2]);
}

TEST(CudaLinear, RepeatedShapesReuseCachedPlans) {
  GENREC_REQUIRE_CUDA();
  cuda::GemmContext ctx;
  const int64_t tokens = 333, IC = 64, OC = 128;
  auto in = test::upload<__nv_bfloat16>(test::random_normal(tokens * IC, 1));
  auto w = test::upload<__nv_bfloat16>(test::random_normal(IC * OC, 2));
  auto bias = test::upload<float>(test::random_normal(OC, 3));
  test::DeviceArray<__nv_bfloat16> out(tokens * OC);
  cuda::linear_forward<__nv_bfloat16>(ctx, out.get(), in.get(), w.get(), bias.get(), tokens, IC, OC,
                                      nullptr);
  const auto first = ctx.stats();
  const size_t plans = ctx.cached_plans();
  EXPECT_GE(first.heuristic_queries, 1);
  for (int i = 0; i < 10; ++i) {
    cuda::linear_forward<__nv_bfloat16>(ctx, out.get(), in.get(), w.get(), bias.get(), tokens, IC,
                                        OC, nullptr);
  }
  const auto after = ctx.stats();
  EXPECT_EQ(after.heuristic_queries, first.heuristic_queries);
  EXPECT_EQ(after.calls, first.calls + 10);
  EXPECT_EQ(ctx.cached_plans(), plans);
  GENREC_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace
}  // namespace genrec
