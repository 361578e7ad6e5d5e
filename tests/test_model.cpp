// Whole-layer gradient checks: HstuBlock and RetrievalModel backward against central finite
// differences of their own float forward, with dropout on (its mask is reproducible).
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/philox.h"
#include "model/hstu_block.h"
#include "model/retrieval_model.h"

namespace genrec {
namespace {

// Central differences with h = 3e-3: the truncation error (∝ h²) is largest on the bias
// tables, whose gradient passes through the attention LayerNorm (measured 2e-3 relative), and
// float rounding adds ~1e-4; 1e-2 on the relative L2 error leaves 4x margin and still fails
// on any wrong term (a dropped factor or a missing path moves it to O(1)).
constexpr double kGradTolerance = 1e-2;
constexpr float kStep = 3e-3f;

double rel_l2(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) num += (a[i] - b[i]) * (a[i] - b[i]), den += b[i] * b[i];
  return std::sqrt(num / std::max(den, 1e-30));
}

struct BlockFixture {
  HstuBlockConfig config{/*dim=*/8,           /*num_heads=*/2,        /*dim_qk=*/4,
                         /*dim_v=*/3,         /*dropout=*/0.3f,
                         /*num_positions=*/6, /*num_time_buckets=*/12};
  ParameterSet params;
  HstuBlock block{config, params, declare_hstu_block(params, "b", config), 7};
  std::vector<int64_t> offsets{0, 3, 3, 8, 9};  // includes an empty and a length-1 sequence
  std::vector<int64_t> timestamps;
  std::vector<float> x, w;
  HstuBatchContext ctx;

  BlockFixture() {
    params.allocate();
    params.initialize(3);
    Philox rng(11);
    // Non-trivial biases so their gradients are exercised away from zero.
    for (float& v : params.values()) v += 0.1f * rng.normal();
    const int64_t T = offsets.back();
    x.resize(T * config.dim);
    w.resize(T * config.dim);
    for (float& v : x) v = rng.normal();
    for (float& v : w) v = rng.normal();
    int64_t t = 1000;
    for (int64_t i = 0; i < T; ++i) timestamps.push_back(t += 1 + rng.below(5000));
    ctx = {offsets.data(), 4, T, timestamps.data(), 1.0f / 6, /*training=*/true, 99};
  }

  double loss() {
    std::vector<float> out(x.size());
    block.forward(out.data(), x.data(), ctx);
    double s = 0;
    for (size_t i = 0; i < out.size(); ++i) s += static_cast<double>(w[i]) * out[i];
    return s;
  }
};

TEST(ModelHstuBlock, GradientMatchesFiniteDifferences) {
  BlockFixture f;
  std::vector<float> out(f.x.size()), d_x(f.x.size(), NAN);
  f.params.zero_grad();
  f.block.forward(out.data(), f.x.data(), f.ctx);
  f.block.backward(d_x.data(), f.w.data(), f.x.data(), f.ctx);

  std::vector<double> analytic, numeric;
  for (size_t i = 0; i < f.x.size(); ++i) {
    float saved = f.x[i];
    f.x[i] = saved + kStep;
    double up = f.loss();
    f.x[i] = saved - kStep;
    double down = f.loss();
    f.x[i] = saved;
    numeric.push_back((up - down) / (2 * kStep));
    analytic.push_back(d_x[i]);
  }
  EXPECT_LT(rel_l2(analytic, numeric), kGradTolerance) << "input gradient";

  for (int p = 0; p < f.params.count(); ++p) {
    std::vector<double> a, n;
    float* value = f.params.value(p);
    const float* grad = f.params.grad(p);
    for (int64_t i = 0; i < f.params.info(p).numel; ++i) {
      float saved = value[i];
      value[i] = saved + kStep;
      double up = f.loss();
      value[i] = saved - kStep;
      double down = f.loss();
      value[i] = saved;
      n.push_back((up - down) / (2 * kStep));
      a.push_back(grad[i]);
    }
    EXPECT_LT(rel_l2(a, n), kGradTolerance) << f.params.info(p).name;
  }
}

TEST(ModelHstuBlock, EvalModeIsDeterministicAndDropoutChangesTraining) {
  BlockFixture f;
  std::vector<float> a(f.x.size()), b(f.x.size());
  f.ctx.training = false;
  f.block.forward(a.data(), f.x.data(), f.ctx);
  f.block.forward(b.data(), f.x.data(), f.ctx);
  EXPECT_EQ(a, b);
  f.ctx.training = true;
  f.block.forward(b.data(), f.x.data(), f.ctx);
  EXPECT_NE(a, b);
}

TEST(ModelRetrieval, TrainStepGradientMatchesFiniteDifferences) {
  RetrievalConfig config;
  config.num_items = 20;
  config.dim = 8;
  config.num_layers = 2;
  config.num_heads = 2;
  config.dim_qk = 4;
  config.dim_v = 4;
  config.dropout = 0.2f;
  config.max_len = 6;
  config.time_bias = true;
  config.num_time_buckets = 10;
  config.num_negatives = 7;
  config.in_batch_negatives = true;
  config.temperature = 0.5f;  // milder than training's 0.05 keeps finite differences accurate
  CpuRetrievalModel model(config);
  model.params().initialize(5);
  for (float& v : model.params().values()) v *= 4.0f;  // O(1) embeddings: well-scaled loss

  TokenBatch batch;
  batch.offsets = {0, 4, 5, 10};
  Philox rng(8);
  for (int64_t t = 0; t < 10; ++t) {
    batch.items.push_back(1 + rng.below(20));
    batch.targets.push_back(1 + rng.below(20));
    batch.timestamps.push_back(100 * t + rng.below(90));
  }
  ParameterSet& params = model.params();
  model.zero_grad();
  model.train_step(batch, 1, 3);
  std::vector<float> grad = params.grads();

  // A random sample of parameters across all tensors (all of them would take too long).
  std::vector<double> analytic, numeric;
  for (int s = 0; s < 400; ++s) {
    int64_t i = rng.below(params.numel());
    float saved = params.values()[i];
    params.values()[i] = saved + kStep;
    double up = model.train_step(batch, 1, 3);
    params.values()[i] = saved - kStep;
    double down = model.train_step(batch, 1, 3);
    params.values()[i] = saved;
    numeric.push_back((up - down) / (2 * kStep));
    analytic.push_back(grad[i]);
  }
  EXPECT_LT(rel_l2(analytic, numeric), kGradTolerance);
  EXPECT_GT(std::inner_product(numeric.begin(), numeric.end(), numeric.begin(), 0.0), 1e-6);
}

TEST(ModelRetrieval, UserEmbeddingsAreUnitLengthAndDependOnHistory) {
  RetrievalConfig config;
  config.num_items = 30;
  config.dim = 16;
  config.dim_qk = config.dim_v = 16;
  config.max_len = 10;
  CpuRetrievalModel model(config);
  model.params().initialize(1);
  TokenBatch batch;
  batch.offsets = {0, 3, 6};
  batch.items = {1, 2, 3, 1, 2, 4};
  batch.timestamps = {1, 2, 3, 1, 2, 3};
  std::vector<float> users(2 * 16, NAN);
  model.encode_users(batch, users.data());
  double n0 = 0, diff = 0;
  for (int c = 0; c < 16; ++c)
    n0 += users[c] * users[c], diff += std::fabs(users[c] - users[16 + c]);
  EXPECT_NEAR(n0, 1.0, 1e-5);
  EXPECT_GT(diff, 1e-4);
}

TEST(ModelRetrieval, RejectsSequencesLongerThanMaxLen) {
  RetrievalConfig config;
  config.num_items = 5;
  config.dim = config.dim_qk = config.dim_v = 4;
  config.max_len = 2;
  CpuRetrievalModel model(config);
  TokenBatch batch;
  batch.offsets = {0, 3};
  batch.items = {1, 2, 3};
  batch.timestamps = {1, 2, 3};
  std::vector<float> users(4);
  EXPECT_THROW(model.encode_users(batch, users.data()), Error);
}

}  // namespace
}  // namespace genrec
