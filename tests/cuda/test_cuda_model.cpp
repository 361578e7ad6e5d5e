// One training step of the CUDA model (bf16 activations, fp32 master weights) against the fp32
// CPU model from the same parameters, batch, dropout masks and negatives.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "../op_test_util.h"
#include "core/philox.h"
#include "model/retrieval_model.h"
#include "model_step_check.h"

namespace genrec {
namespace {

using test::kDecisiveGradient;
using test::kDecisiveSignFlips;
using test::kGradTolerance;
using test::kLossTolerance;
using test::kUpdateTolerance;
using test::rel_l2;

TEST(CudaModel, TrainingStepMatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const RetrievalConfig config = test::step_check_config();
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
  const ParameterSet& cpu_params = cpu_model->params();
  const std::vector<float>& g_cpu = cpu_model->params().grads();
  const std::vector<float>& g_gpu = gpu_model->params().grads();
  double grad_error = rel_l2(g_gpu, g_cpu);
  EXPECT_LT(grad_error, kGradTolerance);
  for (int p = 0; p < cpu_params.count(); ++p) {  // per-parameter errors, to localise a failure
    const ParameterInfo& info = cpu_params.info(p);
    auto slice = [&](const std::vector<float>& v) {
      return std::vector<float>(v.begin() + info.offset, v.begin() + info.offset + info.numel);
    };
    std::printf("  %-28s gradient rel L2 %.3g\n", info.name.c_str(),
                rel_l2(slice(g_gpu), slice(g_cpu)));
  }

  const std::vector<float> before = cpu_params.values();
  cpu::AdamConfig adam;
  cpu_model->optimizer_step(adam, 1e-3f, 1.0f);
  gpu_model->optimizer_step(adam, 1e-3f, 1.0f);
  gpu_model->download();
  const std::vector<float>& after_cpu = cpu_model->params().values();
  const std::vector<float>& after_gpu = gpu_model->params().values();
  std::vector<float> update_cpu(before.size()), update_gpu(before.size());
  int64_t decisive = 0, flips = 0;
  for (int p = 0; p < cpu_params.count(); ++p) {
    const ParameterInfo& info = cpu_params.info(p);
    double sum_squares = 0;
    for (int64_t i = info.offset; i < info.offset + info.numel; ++i)
      sum_squares += double(g_cpu[i]) * g_cpu[i];
    const double threshold = kDecisiveGradient * std::sqrt(sum_squares / info.numel);
    for (int64_t i = info.offset; i < info.offset + info.numel; ++i) {
      update_cpu[i] = after_cpu[i] - before[i];
      update_gpu[i] = after_gpu[i] - before[i];
      if (std::fabs(g_cpu[i]) < threshold || g_cpu[i] == 0.0f) continue;
      ++decisive;
      flips += (update_cpu[i] > 0) != (update_gpu[i] > 0);
    }
  }
  double update_error = rel_l2(update_gpu, update_cpu);
  EXPECT_GT(decisive, static_cast<int64_t>(before.size() / 4));
  EXPECT_LT(double(flips) / double(decisive), kDecisiveSignFlips) << flips << " of " << decisive;
  EXPECT_LT(update_error, kUpdateTolerance);
  std::printf(
      "cpu loss %.6f gpu loss %.6f, gradient rel L2 %.3g, update rel L2 %.3g, sign flips %lld "
      "of %lld decisive elements\n",
      cpu_loss, gpu_loss, grad_error, update_error, static_cast<long long>(flips),
      static_cast<long long>(decisive));
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
