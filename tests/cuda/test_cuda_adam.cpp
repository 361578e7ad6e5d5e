// CUDA Adam/AdamW against the CPU op over several steps, including the fused bf16 copy.
#include <gtest/gtest.h>

#include <vector>

#include "cuda_test_util.h"
#include "ops/adam.h"
#include "ops/cuda/adam.h"

namespace genrec {
namespace {

using test::kCudaF32RelTol;

void check_adam(const cpu::AdamConfig& config, int64_t n, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << "n=" << n << " decoupled=" << config.decoupled
                                  << " wd=" << config.weight_decay);
  auto param = test::random_normal(n, seed);
  std::vector<float> m(n, 0.0f), v(n, 0.0f);
  auto d_param = test::upload<float>(param);
  auto d_m = test::upload<float>(m);
  auto d_v = test::upload<float>(v);
  test::DeviceArray<float> d_grad(n);
  test::DeviceArray<__nv_bfloat16> d_bf16(n);
  for (int64_t step = 1; step <= 12; ++step) {
    auto grad = test::random_normal(n, seed + 100 * step, 0.1f);
    d_grad.upload(grad);
    cpu::adam_update(param.data(), grad.data(), m.data(), v.data(), n, config, step);
    d_bf16.poison();
    // Every other step without the bf16 copy.
    cuda::adam_update(d_param.get(), d_grad.get(), d_m.get(), d_v.get(), n, config, step,
                      step % 2 == 0 ? d_bf16.get() : nullptr, nullptr);
    auto got = d_param.download();
    ASSERT_LT(test::rel_l2(got, param), kCudaF32RelTol) << "step " << step;
    ASSERT_LT(test::rel_l2(d_m.download(), m), kCudaF32RelTol) << "step " << step;
    ASSERT_LT(test::rel_l2(d_v.download(), v), kCudaF32RelTol) << "step " << step;
    if (step % 2 == 0) {
      // The copy is exactly bf16(param) of the device's own update.
      auto copy = d_bf16.download_raw();
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_EQ(test::bits_of(copy[i]), test::bits_of(__float2bfloat16_rn(got[i])))
            << "element " << i;
      }
    }
  }
}

TEST(CudaAdam, AdamWMatchesCpu) {
  GENREC_REQUIRE_CUDA();
  cpu::AdamConfig config;
  config.lr = 3e-3f;
  config.weight_decay = 0.05f;
  config.decoupled = true;
  for (int64_t n : {1, 1000, 100003}) check_adam(config, n, 10 + n);
}

TEST(CudaAdam, AdamWithL2MatchesCpu) {
  GENREC_REQUIRE_CUDA();
  cpu::AdamConfig config;
  config.lr = 1e-2f;
  config.beta2 = 0.999f;
  config.weight_decay = 0.01f;
  config.decoupled = false;
  for (int64_t n : {5, 65537}) check_adam(config, n, 20 + n);
}

TEST(CudaAdam, RejectsStepZero) {
  GENREC_REQUIRE_CUDA();
  test::DeviceArray<float> p(4), g(4), m(4), v(4);
  EXPECT_THROW(
      cuda::adam_update(p.get(), g.get(), m.get(), v.get(), 4, cpu::AdamConfig{}, 0, nullptr),
      Error);
}

}  // namespace
}  // namespace genrec
