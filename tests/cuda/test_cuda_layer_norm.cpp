// CUDA LayerNorm against the CPU op on the same inputs, fp32 and bf16 activations, jagged
// token counts from batches of 1 to 256 sequences, widths below, at and above a warp.
#include <gtest/gtest.h>

#include <vector>

#include "cuda_test_util.h"
#include "ops/cuda/layer_norm.h"
#include "ops/layer_norm.h"

namespace genrec {
namespace {

using test::kCudaF32RelTol;

constexpr float kEps = 1e-5f;

template <typename T>
class CudaLayerNormTest : public testing::Test {};
using Types = testing::Types<float, __nv_bfloat16>;
TYPED_TEST_SUITE(CudaLayerNormTest, Types);

// Rows with their own offset and scale, so that mean and rstd matter; rounded through T.
template <typename T>
std::vector<float> make_input(int64_t tokens, int64_t C, uint64_t seed) {
  auto x = test::random_normal(tokens * C, seed);
  auto shift = test::random_normal(tokens, seed + 1, 2.0f);
  auto scale = test::random_uniform(tokens, seed + 2, 0.5f, 3.0f);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t c = 0; c < C; ++c) x[t * C + c] = shift[t] + scale[t] * x[t * C + c];
  }
  return test::round_through<T>(x);
}

const std::vector<int64_t>& widths() {
  static const std::vector<int64_t> w = {24, 96, 257, 1536};
  return w;
}

TYPED_TEST(CudaLayerNormTest, ForwardMatchesCpu) {
  GENREC_REQUIRE_CUDA();
  using T = TypeParam;
  uint64_t seed = 1;
  for (int64_t B : test::batch_sizes()) {
    const int64_t tokens = test::total_tokens(test::jagged_lengths(B, 24, seed));
    for (int64_t C : widths()) {
      for (bool affine : {true, false}) {
        SCOPED_TRACE(testing::Message() << test::type_name<T>() << " tokens=" << tokens
                                        << " C=" << C << " affine=" << affine);
        auto x = make_input<T>(tokens, C, seed += 5);
        auto w = test::random_normal(C, seed + 3, 0.5f, 1.0f);
        auto b = test::random_normal(C, seed + 4);
        std::vector<float> out(tokens * C), mean(tokens), rstd(tokens);
        cpu::layer_norm_forward(out.data(), mean.data(), rstd.data(), x.data(),
                                affine ? w.data() : nullptr, affine ? b.data() : nullptr, tokens, C,
                                kEps);
        auto dx = test::upload<T>(x);
        auto dw = test::upload<float>(w);
        auto db = test::upload<float>(b);
        test::DeviceArray<T> d_out(tokens * C);
        test::DeviceArray<float> d_mean(tokens), d_rstd(tokens);
        d_out.poison();
        d_mean.poison();
        d_rstd.poison();
        cuda::layer_norm_forward<T>(d_out.get(), d_mean.get(), d_rstd.get(), dx.get(),
                                    affine ? dw.get() : nullptr, affine ? db.get() : nullptr,
                                    tokens, C, kEps, nullptr);
        EXPECT_LT(test::rel_l2(d_out.download(), out), test::rel_tol<T>());
        // Statistics are fp32 from identical inputs on both sides.
        EXPECT_LT(test::rel_l2(d_mean.download(), mean), kCudaF32RelTol);
        EXPECT_LT(test::rel_l2(d_rstd.download(), rstd), kCudaF32RelTol);
      }
    }
  }
}

TYPED_TEST(CudaLayerNormTest, BackwardMatchesCpu) {
  GENREC_REQUIRE_CUDA();
  using T = TypeParam;
  uint64_t seed = 500;
  for (int64_t B : test::batch_sizes()) {
    const int64_t tokens = test::total_tokens(test::jagged_lengths(B, 24, seed));
    for (int64_t C : widths()) {
      for (bool affine : {true, false}) {
        SCOPED_TRACE(testing::Message() << test::type_name<T>() << " tokens=" << tokens
                                        << " C=" << C << " affine=" << affine);
        auto x = make_input<T>(tokens, C, seed += 5);
        auto g = test::round_through<T>(test::random_normal(tokens * C, seed + 1));
        auto w = test::random_normal(C, seed + 3, 0.5f, 1.0f);
        auto b = test::random_normal(C, seed + 4);
        std::vector<float> out(tokens * C), mean(tokens), rstd(tokens);
        cpu::layer_norm_forward(out.data(), mean.data(), rstd.data(), x.data(),
                                affine ? w.data() : nullptr, affine ? b.data() : nullptr, tokens, C,
                                kEps);
        auto dw_acc = test::random_normal(C, seed + 6);  // parameter gradients accumulate
        auto db_acc = test::random_normal(C, seed + 7);
        std::vector<float> dx(tokens * C);
        auto d_x = test::upload<T>(x);
        auto d_g = test::upload<T>(g);
        auto d_w = test::upload<float>(w);
        auto d_mean = test::upload<float>(mean);
        auto d_rstd = test::upload<float>(rstd);
        auto d_dw = test::upload<float>(dw_acc);
        auto d_db = test::upload<float>(db_acc);
        test::DeviceArray<T> d_dx(tokens * C);
        d_dx.poison();
        cpu::layer_norm_backward(dx.data(), affine ? dw_acc.data() : nullptr,
                                 affine ? db_acc.data() : nullptr, g.data(), x.data(),
                                 affine ? w.data() : nullptr, mean.data(), rstd.data(), tokens, C);
        cuda::layer_norm_backward<T>(d_dx.get(), affine ? d_dw.get() : nullptr,
                                     affine ? d_db.get() : nullptr, d_g.get(), d_x.get(),
                                     affine ? d_w.get() : nullptr, d_mean.get(), d_rstd.get(),
                                     tokens, C, nullptr);
        EXPECT_LT(test::rel_l2(d_dx.download(), dx), test::rel_tol<T>()) << "d_in";
        // Skipped when null: the buffers keep their values (then equal to the untouched CPU ones).
        EXPECT_LT(test::rel_l2(d_dw.download(), dw_acc), kCudaF32RelTol) << "d_weight";
        EXPECT_LT(test::rel_l2(d_db.download(), db_acc), kCudaF32RelTol) << "d_bias";
      }
    }
  }
}

TYPED_TEST(CudaLayerNormTest, BackwardInPlaceAndDeterministic) {
  GENREC_REQUIRE_CUDA();
  using T = TypeParam;
  const int64_t tokens = 3001, C = 192;
  auto x = make_input<T>(tokens, C, 900);
  auto g = test::round_through<T>(test::random_normal(tokens * C, 901));
  auto w = test::random_normal(C, 902, 0.5f, 1.0f);
  auto d_x = test::upload<T>(x);
  auto d_w = test::upload<float>(w);
  test::DeviceArray<T> d_y(tokens * C);
  test::DeviceArray<float> d_mean(tokens), d_rstd(tokens);
  cuda::layer_norm_forward<T>(d_y.get(), d_mean.get(), d_rstd.get(), d_x.get(), d_w.get(), nullptr,
                              tokens, C, kEps, nullptr);
  std::vector<std::vector<float>> dws, dxs;
  for (int run = 0; run < 3; ++run) {
    auto d_g = test::upload<T>(g);
    test::DeviceArray<float> d_dw(C), d_db(C);
    d_dw.upload(std::vector<float>(C, 0.25f));
    d_db.upload(std::vector<float>(C, -1.0f));
    // d_in aliases d_out.
    cuda::layer_norm_backward<T>(d_g.get(), d_dw.get(), d_db.get(), d_g.get(), d_x.get(), d_w.get(),
                                 d_mean.get(), d_rstd.get(), tokens, C, nullptr);
    dws.push_back(d_dw.download());
    auto db = d_db.download();
    dws.back().insert(dws.back().end(), db.begin(), db.end());
    dxs.push_back(d_g.download());
  }
  EXPECT_EQ(dws[0], dws[1]);
  EXPECT_EQ(dws[0], dws[2]);
  EXPECT_EQ(dxs[0], dxs[1]);
  // The aliased result equals a separate output buffer's.
  auto d_g = test::upload<T>(g);
  test::DeviceArray<T> d_dx(tokens * C);
  d_dx.poison();
  cuda::layer_norm_backward<T>(d_dx.get(), nullptr, nullptr, d_g.get(), d_x.get(), d_w.get(),
                               d_mean.get(), d_rstd.get(), tokens, C, nullptr);
  EXPECT_EQ(d_dx.download(), dxs[0]);
}

}  // namespace
}  // namespace genrec
