// fp32 <-> bf16 conversion kernels against the host conversions of cuda_bf16.h, bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cuda_test_util.h"
#include "ops/cuda/convert.h"

namespace genrec {
namespace {

float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}

TEST(CudaConvert, Fp32ToBf16RoundsToNearestEvenLikeTheHost) {
  GENREC_REQUIRE_CUDA();
  auto x = test::random_normal(100003, 1, 3.0f);
  // Ties (half-way between two bf16 values, both parities), denormals, extremes, infinities.
  for (uint32_t b :
       {0x3F808000u, 0x3F818000u, 0xBF808000u, 0x3F807FFFu, 0x3F808001u, 0x00000001u, 0x80400000u,
        0x7F7FFFFFu, 0x7F800000u, 0xFF800000u, 0x00000000u, 0x80000000u}) {
    x.push_back(from_bits(b));
  }
  const int64_t n = static_cast<int64_t>(x.size());
  auto in = test::upload<float>(x);
  test::DeviceArray<__nv_bfloat16> out(n);
  out.poison();
  cuda::float_to_bf16(out.get(), in.get(), n, nullptr);
  auto got = out.download_raw();
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(test::bits_of(got[i]), test::bits_of(__float2bfloat16_rn(x[i])))
        << "element " << i << " = " << x[i];
  }

  // And back: bf16 -> fp32 is exact.
  test::DeviceArray<float> back(n);
  back.poison();
  cuda::bf16_to_float(back.get(), out.get(), n, nullptr);
  auto widened = back.download();
  for (int64_t i = 0; i < n; ++i) {
    const float expect = __bfloat162float(got[i]);
    ASSERT_EQ(0, std::memcmp(&widened[i], &expect, sizeof(float))) << "element " << i;
  }
}

TEST(CudaConvert, SameTypeCopiesAndEmptyIsANoOp) {
  GENREC_REQUIRE_CUDA();
  auto x = test::random_normal(4097, 2);
  auto in = test::upload<float>(x);
  test::DeviceArray<float> out(4097);
  out.poison();
  cuda::convert(out.get(), in.get(), 4097, nullptr);
  EXPECT_EQ(out.download(), x);

  auto inb = test::upload<__nv_bfloat16>(x);
  test::DeviceArray<__nv_bfloat16> outb(4097);
  outb.poison();
  cuda::convert(outb.get(), inb.get(), 4097, nullptr);
  EXPECT_EQ(outb.download(), test::round_through<__nv_bfloat16>(x));
  cuda::convert(outb.get(), in.get(), 0, nullptr);
  EXPECT_THROW(cuda::convert(outb.get(), in.get(), -1, nullptr), Error);
}

}  // namespace
}  // namespace genrec
