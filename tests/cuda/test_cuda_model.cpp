// One training step of the CUDA model (bf16 activations, fp32 master weights) against the fp32
// CPU model from the same parameters, batch, dropout masks and negatives.
#include <gtest/gtest.h>

#include <cmath>

#include "core/philox.h"
#include "model/retrieval_model.h"

namespace genrec {
namespace {

// bf16 keeps 8 mantissa bits (relative rounding 2^-9 ≈ 2e-3 per value); through two HSTU
// layers with fp32 accumulation the loss stays within 1e-2 and the gradient vector within a
// few 1e-2 (it sums many bf16-rounded products, mostly of small terms).
constexpr double kLossTolerance = 1e-2;
constexpr double kGradTolerance = 5e-2;
// Adam's first update is ±lr where the gradient is clearly non-zero; after one step the
// parameters differ by far less than their own size.
constexpr double kParamTolerance = 1e-3;

double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

TEST(CudaModel, TrainingStepMatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  RetrievalConfig config;
  config.num_items = 500;
  config.dim = 64;
  config.num_layers = 2;
  config.num_heads = 2;
  config.dim_qk = 32;
  config.dim_v = 32;
  config.dropout = 0.2f;
  config.max_len = 50;
  config.time_bias = true;
  config.num_negatives = 128;
  config.in_batch_negatives = true;
  auto cpu_model = make_retrieval_model(config, Device::kCPU);
  auto gpu_model = make_retrieval_model(config, Device::kCUDA);
  cpu_model->params().initialize(3);
  gpu_model->params().values() = cpu_model->params().values();
  gpu_model->upload();

  TokenBatch batch;
  Philox rng(5);
  for (int b = 0; b < 64; ++b) {
    int64_t length = 1 + static_cast<int64_t>(rng.below(config.max_len));
    int64_t t = 1000;
    for (int64_t i = 0; i < length; ++i) {
      batch.items.push_back(1 + rng.below(config.num_items));
      batch.targets.push_back(1 + rng.below(config.num_items));
      batch.timestamps.push_back(t += 1 + rng.below(100000));
    }
    batch.offsets.push_back(static_cast<int64_t>(batch.items.size()));
  }
  cpu_model->zero_grad();
  gpu_model->zero_grad();
  float cpu_loss = cpu_model->train_step(batch, 11, 7);
  float gpu_loss = gpu_model->train_step(batch, 11, 7);
  EXPECT_LT(std::fabs(gpu_loss - cpu_loss) / std::fabs(cpu_loss), kLossTolerance)
      << "cpu " << cpu_loss << " gpu " << gpu_loss;

  gpu_model->download();
  double grad_error = rel_l2(gpu_model->params().grads(), cpu_model->params().grads());
  EXPECT_LT(grad_error, kGradTolerance);

  cpu::AdamConfig adam;
  cpu_model->optimizer_step(adam, 1e-3f, 1.0f);
  gpu_model->optimizer_step(adam, 1e-3f, 1.0f);
  gpu_model->download();
  double param_error = rel_l2(gpu_model->params().values(), cpu_model->params().values());
  EXPECT_LT(param_error, kParamTolerance);
  std::printf("cpu loss %.6f gpu loss %.6f, gradient rel L2 %.3g, parameters rel L2 %.3g\n",
              cpu_loss, gpu_loss, grad_error, param_error);
}

TEST(CudaModel, EvaluationRanksMatchCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  RetrievalConfig config;
  config.num_items = 2000;
  config.dim = 32;
  config.dim_qk = config.dim_v = 32;
  config.max_len = 20;
  auto cpu_model = make_retrieval_model(config, Device::kCPU);
  auto gpu_model = make_retrieval_model(config, Device::kCUDA);
  cpu_model->params().initialize(9);
  for (float& v : cpu_model->params().values()) v *= 10.0f;  // spread the scores out
  gpu_model->params().values() = cpu_model->params().values();
  gpu_model->upload();
  TokenBatch batch;
  std::vector<int64_t> targets;
  Philox rng(2);
  for (int b = 0; b < 100; ++b) {
    int64_t length = 1 + static_cast<int64_t>(rng.below(config.max_len));
    for (int64_t i = 0; i < length; ++i) {
      batch.items.push_back(1 + rng.below(config.num_items));
      batch.timestamps.push_back(i);
    }
    batch.offsets.push_back(static_cast<int64_t>(batch.items.size()));
    targets.push_back(1 + rng.below(config.num_items));
  }
  std::vector<int64_t> cpu_ranks(100), gpu_ranks(100, -7);
  cpu_model->rank_targets(batch, targets.data(), cpu_ranks.data());
  gpu_model->rank_targets(batch, targets.data(), gpu_ranks.data());
  // bf16 activations move scores slightly; ranks agree to within a small fraction of V.
  double mean_abs = 0;
  for (int b = 0; b < 100; ++b) mean_abs += std::fabs(double(cpu_ranks[b] - gpu_ranks[b]));
  EXPECT_LT(mean_abs / 100, 0.01 * config.num_items);
  for (int64_t r : gpu_ranks) EXPECT_GE(r, 0);
}

}  // namespace
}  // namespace genrec
