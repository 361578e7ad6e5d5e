// CUDA pointwise ops against the CPU ops on the same inputs: SiLU, strided gating, L2
// normalisation (clamped rows included) and dropout, whose output must equal the CPU's bit for
// bit (same Philox mask, same fp32 multiply, same rounding to bf16).
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "cuda_test_util.h"
#include "ops/cuda/elementwise.h"
#include "ops/elementwise.h"

namespace genrec {
namespace {

template <typename T>
class CudaElementwiseTest : public testing::Test {};
using Types = testing::Types<float, __nv_bfloat16>;
TYPED_TEST_SUITE(CudaElementwiseTest, Types);

TYPED_TEST(CudaElementwiseTest, SiluForwardAndBackwardMatchCpu) {
  GENREC_REQUIRE_CUDA();
  using T = TypeParam;
  // 1003: 16-byte packs and a tail; 1 only a tail.
  for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{1003}, int64_t{1} << 20}) {
    SCOPED_TRACE(testing::Message() << test::type_name<T>() << " n=" << n);
    auto x = test::round_through<T>(test::random_normal(n, n, 3.0f));
    auto g = test::round_through<T>(test::random_normal(n, n + 1));
    std::vector<float> out(n), dx(n);
    cpu::silu_forward(out.data(), x.data(), n);
    cpu::silu_backward(dx.data(), g.data(), x.data(), n);
    auto d_x = test::upload<T>(x);
    auto d_g = test::upload<T>(g);
    test::DeviceArray<T> d_out(n), d_dx(n);
    d_out.poison();
    d_dx.poison();
    cuda::silu_forward<T>(d_out.get(), d_x.get(), n, nullptr);
    cuda::silu_backward<T>(d_dx.get(), d_g.get(), d_x.get(), n, nullptr);
    EXPECT_LT(test::rel_l2(d_out.download(), out), test::rel_tol<T>());
    EXPECT_LT(test::rel_l2(d_dx.download(), dx), test::rel_tol<T>());
    if (n > 1) {  // views one element in are not 16-byte aligned: one element per access
      test::DeviceArray<T> d_shifted(n);
      d_shifted.poison();
      cuda::silu_backward<T>(d_shifted.get() + 1, d_g.get() + 1, d_x.get() + 1, n - 1, nullptr);
      const std::vector<float> shifted = d_shifted.download();
      EXPECT_LT(test::rel_l2(std::vector<float>(shifted.begin() + 1, shifted.end()),
                             std::vector<float>(dx.begin() + 1, dx.end())),
                test::rel_tol<T>());
    }
    // In place: out == in, d_in == d_out.
    cuda::silu_backward<T>(d_g.get(), d_g.get(), d_x.get(), n, nullptr);
    cuda::silu_forward<T>(d_x.get(), d_x.get(), n, nullptr);
    EXPECT_EQ(d_x.download(), d_out.download());
    EXPECT_EQ(d_g.download(), d_dx.download());
  }
}

TYPED_TEST(CudaElementwiseTest, GateWithStridedUMatchesCpu) {
  GENREC_REQUIRE_CUDA();
  using T = TypeParam;
  uint64_t seed = 10;
  for (int64_t B : test::batch_sizes()) {
    const int64_t tokens = test::total_tokens(test::jagged_lengths(B, 30, seed));
    for (auto [C, ldu] : {std::pair<int64_t, int64_t>{48, 48}, {33, 100}, {256, 1024}}) {
      SCOPED_TRACE(testing::Message()
                   << test::type_name<T>() << " tokens=" << tokens << " C=" << C << " ldu=" << ldu);
      auto x = test::round_through<T>(test::random_normal(tokens * C, seed += 3));
      auto u = test::round_through<T>(test::random_normal(tokens * ldu, seed + 1));
      auto g = test::round_through<T>(test::random_normal(tokens * C, seed + 2));
      std::vector<float> out(tokens * C), dx(tokens * C), du = u;
      cpu::gate_forward(out.data(), x.data(), u.data(), ldu, tokens, C);
      cpu::gate_backward(dx.data(), du.data(), g.data(), x.data(), u.data(), ldu, tokens, C);
      auto d_x = test::upload<T>(x);
      auto d_u = test::upload<T>(u);
      auto d_g = test::upload<T>(g);
      auto d_du = test::upload<T>(u);  // columns past C must keep these values
      test::DeviceArray<T> d_out(tokens * C), d_dx(tokens * C);
      d_out.poison();
      d_dx.poison();
      cuda::gate_forward<T>(d_out.get(), d_x.get(), d_u.get(), ldu, tokens, C, nullptr);
      cuda::gate_backward<T>(d_dx.get(), d_du.get(), d_g.get(), d_x.get(), d_u.get(), ldu, tokens,
                             C, nullptr);
      EXPECT_LT(test::rel_l2(d_out.download(), out), test::rel_tol<T>());
      EXPECT_LT(test::rel_l2(d_dx.download(), dx), test::rel_tol<T>());
      auto got_du = d_du.download();
      EXPECT_LT(test::rel_l2(got_du, du), test::rel_tol<T>());
      for (int64_t t = 0; t < tokens; ++t) {
        for (int64_t c = C; c < ldu; ++c) ASSERT_EQ(got_du[t * ldu + c], u[t * ldu + c]);
      }
    }
  }
  test::DeviceArray<T> dummy(4);
  EXPECT_THROW(cuda::gate_forward<T>(dummy.get(), dummy.get(), dummy.get(), 1, 1, 2, nullptr),
               Error);
}

TYPED_TEST(CudaElementwiseTest, L2NormalizeMatchesCpuIncludingClampedRows) {
  GENREC_REQUIRE_CUDA();
  using T = TypeParam;
  const float eps = 1e-3f;
  uint64_t seed = 40;
  for (int64_t B : test::batch_sizes()) {
    const int64_t tokens = test::total_tokens(test::jagged_lengths(B, 20, seed)) + 2;
    for (int64_t C : {int64_t{9}, int64_t{64}, int64_t{300}}) {
      SCOPED_TRACE(testing::Message()
                   << test::type_name<T>() << " tokens=" << tokens << " C=" << C);
      auto x = test::random_normal(tokens * C, seed += 3);
      for (int64_t c = 0; c < C; ++c) x[c] *= 1e-5f;    // row 0: norm below eps (clamped)
      for (int64_t c = 0; c < C; ++c) x[C + c] = 0.0f;  // row 1: zero
      x = test::round_through<T>(x);
      auto g = test::round_through<T>(test::random_normal(tokens * C, seed + 1));
      std::vector<float> out(tokens * C), inv(tokens), dx(tokens * C);
      cpu::l2_normalize_forward(out.data(), inv.data(), x.data(), tokens, C, eps);
      auto d_x = test::upload<T>(x);
      auto d_g = test::upload<T>(g);
      test::DeviceArray<T> d_out(tokens * C), d_dx(tokens * C);
      test::DeviceArray<float> d_inv(tokens);
      d_out.poison();
      d_inv.poison();
      d_dx.poison();
      cuda::l2_normalize_forward<T>(d_out.get(), d_inv.get(), d_x.get(), tokens, C, eps, nullptr);
      EXPECT_LT(test::rel_l2(d_out.download(), out), test::rel_tol<T>());
      EXPECT_LT(test::rel_l2(d_inv.download(), inv), test::kCudaF32RelTol);
      // The backward reads the forward output: give both sides the device's (rounded) one.
      auto out_dev = d_out.download();
      cpu::l2_normalize_backward(dx.data(), g.data(), out_dev.data(), inv.data(), tokens, C);
      cuda::l2_normalize_backward<T>(d_dx.get(), d_g.get(), d_out.get(), d_inv.get(), tokens, C,
                                     nullptr);
      auto got = d_dx.download();
      if constexpr (std::is_same_v<T, float>) {
        EXPECT_LT(test::rel_l2(got, dx), test::kCudaF32RelTol);
      } else {
        // bf16: the CPU's unit-norm test (1 - 1e-5) misreads rounded rows as clamped; compare
        // with a reference that projects every unclamped row (rows 0 and 1 are clamped).
        std::vector<double> ref(tokens * C);
        for (int64_t t = 0; t < tokens; ++t) {
          double dot = 0.0;
          for (int64_t c = 0; c < C; ++c) dot += double(out_dev[t * C + c]) * g[t * C + c];
          const double proj = t < 2 ? 0.0 : dot;
          for (int64_t c = 0; c < C; ++c) {
            ref[t * C + c] = inv[t] * (g[t * C + c] - out_dev[t * C + c] * proj);
          }
        }
        EXPECT_LT(test::rel_l2(got, ref), test::kCudaBf16RelTol);
      }
      // Clamped rows: d_x = d_out * inv exactly as the CPU.
      for (int64_t i = 0; i < 2 * C; ++i) {
        ASSERT_NEAR(got[i], g[i] * inv[i / C], 1e-2 * std::abs(g[i] * inv[i / C]) + 1e-6);
      }
    }
  }
}

// Dropout on both sides: float bit-identical, bf16 equal to the CPU result rounded to bf16.
template <typename T>
void check_dropout(int64_t n, float p, uint64_t seed, uint64_t offset) {
  SCOPED_TRACE(testing::Message() << test::type_name<T>() << " n=" << n << " p=" << p
                                  << " offset=" << offset);
  auto x = test::round_through<T>(test::random_normal(n, seed));
  std::vector<float> out(n);
  cpu::dropout_forward(out.data(), x.data(), n, p, seed, offset);
  auto d_x = test::upload<T>(x);
  test::DeviceArray<T> d_out(n);
  d_out.poison();
  cuda::dropout_forward<T>(d_out.get(), d_x.get(), n, p, seed, offset, nullptr);
  auto got = d_out.download_raw();
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T expect = test::host_cast<T>(out[i]);
    ASSERT_EQ(0, std::memcmp(&got[i], &expect, sizeof(T)))
        << "element " << i << ": " << test::host_float(got[i]) << " vs " << out[i];
    // The mask itself, from philox_uniform (x is never exactly zero here).
    ASSERT_EQ(test::host_float(got[i]) != 0.0f, philox_uniform(seed, offset, i) >= p) << i;
    kept += philox_uniform(seed, offset, i) >= p;
  }
  if (n > 100000 && p > 0.0f && p < 1.0f) {
    // Binomial: the kept fraction is within 6 standard deviations of 1 - p.
    EXPECT_NEAR(static_cast<double>(kept) / n, 1.0 - p, 6.0 * std::sqrt(p * (1.0 - p) / n));
  }
  // Backward with the same (seed, offset) applies the same mask; in place too.
  auto g = test::round_through<T>(test::random_normal(n, seed + 1));
  std::vector<float> dx(n);
  cpu::dropout_backward(dx.data(), g.data(), n, p, seed, offset);
  auto d_g = test::upload<T>(g);
  cuda::dropout_backward<T>(d_g.get(), d_g.get(), n, p, seed, offset, nullptr);
  auto got_dx = d_g.download_raw();
  for (int64_t i = 0; i < n; ++i) {
    const T expect = test::host_cast<T>(dx[i]);
    ASSERT_EQ(0, std::memcmp(&got_dx[i], &expect, sizeof(T))) << "backward element " << i;
  }
}

TYPED_TEST(CudaElementwiseTest, DropoutMaskEqualsCpuBitForBit) {
  GENREC_REQUIRE_CUDA();
  using T = TypeParam;
  for (float p : {0.0f, 0.1f, 0.5f, 1.0f}) {
    check_dropout<T>(1, p, 7, 0);
    check_dropout<T>(1003, p, 1234, 77);  // not a multiple of 4: a partial last Philox block
  }
  check_dropout<T>((int64_t{1} << 20) + 3, 0.3f, 99, (uint64_t{5} << 32) + 11);
  check_dropout<T>(200003, 0.25f, uint64_t{0xDEADBEEF12345678}, 3);
  test::DeviceArray<T> d(8);
  EXPECT_THROW(cuda::dropout_forward<T>(d.get(), d.get(), 8, 1.5f, 1, 2, nullptr), Error);
  EXPECT_THROW(cuda::dropout_forward<T>(d.get(), d.get(), 8, -0.1f, 1, 2, nullptr), Error);
}

}  // namespace
}  // namespace genrec
