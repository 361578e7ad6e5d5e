// The CUDA model with a dynamic item table (model.item_embeddings: dynamic) against the fp32 CPU
// model from the same seed and batches: one training step (the loss, the set of keys the
// lookups inserted, the touched rows' values and Adam state, the dense parameters, clipping over
// both), gradients accumulated over two batches, evaluation ranks without insertion,
// checkpoints between the devices, and whole training runs on the GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <vector>

#include "../op_test_util.h"
#include "../small_run.h"
#include "core/philox.h"
#include "embedding/dynamic_table.h"
#include "model/checkpoint.h"
#include "model/item_embeddings.h"
#include "model/retrieval_model.h"
#include "model_step_check.h"
#include "train/pipeline.h"
#include "train/run_config.h"

namespace genrec {
namespace {

using test::kDecisiveGradient;
using test::kGradTolerance;
using test::kLossTolerance;
using test::kUpdateTolerance;
using test::rel_l2;

// After one Adam step from zero moments m = (1 - β1) g and v = (1 - β2) g², so the rows' m
// carries the gradient error (kGradTolerance) and v twice it. Item rows are read at the input,
// so their gradients pass the whole bf16 backward: a little more room for sign flips near the
// decisive threshold than test::kDecisiveSignFlips over all parameters.
constexpr double kRowSignFlips = 3e-3;
// fp32 on both sides: item vectors normalised from the same rows (initial rows of absent ids
// may differ in the last bits of logf/cosf).
constexpr double kF32Tolerance = 1e-5;
constexpr uint64_t kSeed = 17;

RetrievalConfig training_config() {
  RetrievalConfig config = test::step_check_config();
  config.item_embeddings = ItemStore::kDynamic;
  return config;
}

// B sequences of random items over 1..V (so ids repeat within and across the lookups).
TokenBatch random_batch(const RetrievalConfig& config, int64_t B, uint64_t seed) {
  TokenBatch batch;
  Philox rng(seed);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t length = 1 + static_cast<int64_t>(rng.below(config.max_len));
    int64_t t = 1000;
    for (int64_t i = 0; i < length; ++i) {
      batch.items.push_back(1 + static_cast<int64_t>(rng.below(config.num_items)));
      batch.targets.push_back(1 + static_cast<int64_t>(rng.below(config.num_items)));
      batch.timestamps.push_back(t += 1 + static_cast<int64_t>(rng.below(100000)));
    }
    batch.offsets.push_back(batch.num_tokens());
  }
  return batch;
}

// A CPU and a CUDA model of `config` initialized from kSeed: the same dense parameters and the
// same initial row for every item.
struct Models {
  std::unique_ptr<RetrievalModel> cpu, gpu;
  explicit Models(const RetrievalConfig& config)
      : cpu(make_retrieval_model(config, Device::kCPU)),
        gpu(make_retrieval_model(config, Device::kCUDA)) {
    cpu->initialize(kSeed);
    gpu->initialize(kSeed);
    gpu->upload();
  }
};

// Row i's Adam state: m (D), v (D), update count.
std::vector<float> state_part(const TableRows& rows, int64_t D, int64_t from, int64_t count) {
  std::vector<float> out;
  const int64_t sd = 2 * D + 1;
  for (int64_t i = 0; i < rows.size(); ++i) {
    out.insert(out.end(), rows.states.begin() + i * sd + from,
               rows.states.begin() + i * sd + from + count);
  }
  return out;
}

// `accumulated` batches of gradients, then one optimizer step with clipping, on both devices.
void expect_step_matches_cpu(int accumulated) {
  const RetrievalConfig config = training_config();
  const int64_t D = config.dim;
  Models models(config);
  models.cpu->zero_grad();
  models.gpu->zero_grad();
  for (int k = 0; k < accumulated; ++k) {
    const TokenBatch batch = random_batch(config, 64, 5 + k);
    const float cpu_loss = models.cpu->train_step(batch, 11, 7 + k);
    const float gpu_loss = models.gpu->train_step(batch, 11, 7 + k);
    EXPECT_LT(std::fabs(gpu_loss - cpu_loss) / std::fabs(cpu_loss), kLossTolerance)
        << "batch " << k << ": cpu " << cpu_loss << " gpu " << gpu_loss;
  }
  // Far below the gradient norm, so the clipping scale (one norm over the dense gradients and
  // the rows') shows in every moment.
  const float grad_clip = 1e-3f;
  const std::vector<float> dense_before = models.cpu->params().values();
  cpu::AdamConfig adam;
  models.cpu->optimizer_step(adam, 1e-3f, grad_clip);
  models.gpu->optimizer_step(adam, 1e-3f, grad_clip);
  models.gpu->download();

  const TableRows c = models.cpu->item_table()->export_rows();
  const TableRows g = models.gpu->item_table()->export_rows();
  ASSERT_GT(c.size(), 0);
  ASSERT_EQ(g.keys, c.keys) << "the lookups inserted different items";
  EXPECT_EQ(g.scores, c.scores);
  EXPECT_EQ(g.stamps, c.stamps) << "rows stamped by the optimizer step";
  EXPECT_EQ(models.gpu->item_table()->step(), models.cpu->item_table()->step());
  EXPECT_EQ(state_part(g, D, 2 * D, 1), state_part(c, D, 2 * D, 1)) << "per-row update counts";
  for (float count : state_part(c, D, 2 * D, 1)) ASSERT_EQ(count, 1.0f);
  const std::vector<float> m_cpu = state_part(c, D, 0, D), m_gpu = state_part(g, D, 0, D);
  const double m_error = rel_l2(m_gpu, m_cpu);
  const double v_error = rel_l2(state_part(g, D, D, D), state_part(c, D, D, D));
  EXPECT_LT(m_error, kGradTolerance);
  EXPECT_LT(v_error, 2 * kGradTolerance);

  // Updates from the initial rows: ±lr where the gradient (m) is decisive.
  const Initializer init = item_table_options(config, kSeed).initializer;
  std::vector<float> update_cpu(c.values.size()), update_gpu(c.values.size()), initial(D);
  double sum_squares = 0;
  for (float m : m_cpu) sum_squares += double(m) * m;
  const double threshold = kDecisiveGradient * std::sqrt(sum_squares / double(m_cpu.size()));
  int64_t decisive = 0, flips = 0;
  for (int64_t i = 0; i < c.size(); ++i) {
    init.fill(c.keys[i], initial.data(), D);
    for (int64_t j = 0; j < D; ++j) {
      const int64_t e = i * D + j;
      update_cpu[e] = c.values[e] - initial[j];
      update_gpu[e] = g.values[e] - initial[j];
      if (std::fabs(m_cpu[e]) < threshold || m_cpu[e] == 0.0f) continue;
      ++decisive;
      flips += (update_cpu[e] > 0) != (update_gpu[e] > 0);
    }
  }
  const double update_error = rel_l2(update_gpu, update_cpu);
  EXPECT_GT(decisive, static_cast<int64_t>(c.values.size() / 4));
  EXPECT_LT(double(flips) / double(decisive), kRowSignFlips) << flips << " of " << decisive;
  EXPECT_LT(update_error, kUpdateTolerance);

  // The dense side of the same step: its moments carry the shared clipping scale.
  const double dense_m_error = rel_l2(models.gpu->params().adam_m(), models.cpu->params().adam_m());
  std::vector<float> dense_cpu(dense_before.size()), dense_gpu(dense_before.size());
  for (size_t i = 0; i < dense_before.size(); ++i) {
    dense_cpu[i] = models.cpu->params().values()[i] - dense_before[i];
    dense_gpu[i] = models.gpu->params().values()[i] - dense_before[i];
  }
  const double dense_update_error = rel_l2(dense_gpu, dense_cpu);
  EXPECT_LT(dense_m_error, kGradTolerance);
  EXPECT_LT(dense_update_error, kUpdateTolerance);
  std::printf(
      "%d batch(es): %lld rows, row m rel L2 %.3g, v %.3g, update %.3g, sign flips %lld of %lld; "
      "dense m rel L2 %.3g, update %.3g\n",
      accumulated, static_cast<long long>(c.size()), m_error, v_error, update_error,
      static_cast<long long>(flips), static_cast<long long>(decisive), dense_m_error,
      dense_update_error);
}

TEST(CudaModelDynamicItems, TrainingStepMatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  expect_step_matches_cpu(1);
}

TEST(CudaModelDynamicItems, AccumulatedBatchesMatchCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  expect_step_matches_cpu(2);
}

TEST(CudaModelDynamicItems, EvaluationRanksMatchCpuWithoutInserting) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  RetrievalConfig config;
  config.num_items = 2000;
  config.dim = 32;
  config.dim_qk = config.dim_v = 32;
  config.max_len = 20;
  config.item_embeddings = ItemStore::kDynamic;
  Models models(config);
  for (float& v : models.cpu->params().values()) v *= 10.0f;  // spread the scores out
  models.gpu->params().values() = models.cpu->params().values();
  // Rows for the odd items only: evaluation reads present rows and initial ones.
  std::vector<int64_t> odd;
  std::vector<float> rows;
  Philox rng(4);
  for (int64_t id = 1; id <= config.num_items; id += 2) {
    odd.push_back(id);
    for (int64_t j = 0; j < config.dim; ++j) rows.push_back(rng.normal());
  }
  models.cpu->item_table()->insert_or_assign(odd.data(), rows.data(),
                                             static_cast<int64_t>(odd.size()));
  models.gpu->item_table()->insert_rows(models.cpu->item_table()->export_rows());
  models.gpu->upload();

  std::vector<float> cpu_items, gpu_items;
  models.cpu->item_embeddings(cpu_items);
  models.gpu->item_embeddings(gpu_items);
  EXPECT_LT(rel_l2(gpu_items, cpu_items), kF32Tolerance);

  TokenBatch batch;
  std::vector<int64_t> targets;
  for (int b = 0; b < 100; ++b) {
    const int64_t length = 1 + static_cast<int64_t>(rng.below(config.max_len));
    for (int64_t i = 0; i < length; ++i) {
      batch.items.push_back(1 + static_cast<int64_t>(rng.below(config.num_items)));
      batch.timestamps.push_back(i);
    }
    batch.offsets.push_back(batch.num_tokens());
    targets.push_back(1 + static_cast<int64_t>(rng.below(config.num_items)));
  }
  std::vector<int64_t> cpu_ranks(100), gpu_ranks(100, -7);
  models.cpu->rank_targets(batch, targets.data(), cpu_ranks.data());
  models.gpu->rank_targets(batch, targets.data(), gpu_ranks.data());
  // bf16 activations move scores slightly; ranks agree to within a small fraction of V.
  double mean_abs = 0;
  for (int b = 0; b < 100; ++b) mean_abs += std::fabs(double(cpu_ranks[b] - gpu_ranks[b]));
  EXPECT_LT(mean_abs / 100, 0.01 * config.num_items);
  for (int64_t r : gpu_ranks) EXPECT_GE(r, 0);

  models.gpu->download();
  EXPECT_EQ(models.gpu->item_table()->size(), static_cast<int64_t>(odd.size()))
      << "evaluation inserted rows";
}

void expect_same_rows(const TableRows& a, const TableRows& b, const char* what) {
  EXPECT_EQ(a.keys, b.keys) << what;
  EXPECT_EQ(a.values, b.values) << what;
  EXPECT_EQ(a.states, b.states) << what;
  EXPECT_EQ(a.scores, b.scores) << what;
  EXPECT_EQ(a.stamps, b.stamps) << what;
}

TEST(CudaModelDynamicItems, CheckpointsMoveBetweenDevices) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  RetrievalConfig config = training_config();
  config.num_items = 2000;
  config.dim = config.dim_qk = config.dim_v = 32;
  config.num_layers = 1;
  config.num_heads = 1;
  Models models(config);
  const TokenBatch first = random_batch(config, 16, 21), second = random_batch(config, 16, 22);
  cpu::AdamConfig adam;
  for (RetrievalModel* m : {models.cpu.get(), models.gpu.get()}) {
    m->zero_grad();
    m->train_step(first, 3, 0);
    m->optimizer_step(adam, 1e-2f, 1.0f);
  }
  models.gpu->download();
  std::vector<int64_t> raw(config.num_items);
  std::iota(raw.begin(), raw.end(), int64_t{100});
  const ItemVocabulary vocabulary = ItemVocabulary::from_raw_ids(raw);
  const auto dir = std::filesystem::path(testing::TempDir());
  const std::string gpu_path = (dir / "genrec_cuda_dynamic_items_gpu.ckpt").string();
  const std::string cpu_path = (dir / "genrec_cuda_dynamic_items_cpu.ckpt").string();
  save_checkpoint(gpu_path, *models.gpu, vocabulary, {});
  save_checkpoint(cpu_path, *models.cpu, vocabulary, {});
  const TableRows gpu_rows = models.gpu->item_table()->export_rows();
  const TableRows cpu_rows = models.cpu->item_table()->export_rows();
  ASSERT_LT(gpu_rows.size(), config.num_items) << "the test needs items the step did not touch";

  // GPU -> GPU: the device table holds exactly the saved rows; unseen items keep their rows.
  LoadedCheckpoint on_gpu = load_checkpoint(gpu_path, Device::kCUDA);
  on_gpu.model->download();
  expect_same_rows(on_gpu.model->item_table()->export_rows(), gpu_rows, "GPU -> GPU");
  EXPECT_EQ(on_gpu.model->item_table()->step(), models.gpu->item_table()->step());
  std::vector<float> saved_items, loaded_items;
  models.gpu->item_embeddings(saved_items);
  on_gpu.model->item_embeddings(loaded_items);
  EXPECT_EQ(loaded_items, saved_items);
  EXPECT_EQ(on_gpu.model->params().values(), models.gpu->params().values());

  // GPU -> CPU: the same rows in the CPU table.
  LoadedCheckpoint on_cpu = load_checkpoint(gpu_path, Device::kCPU);
  expect_same_rows(on_cpu.model->item_table()->export_rows(), gpu_rows, "GPU -> CPU");
  std::vector<float> cpu_items;
  on_cpu.model->item_embeddings(cpu_items);
  EXPECT_LT(rel_l2(cpu_items, saved_items), kF32Tolerance);

  // CPU -> GPU: the CPU's rows, and training goes on from them as on the CPU, per-row update
  // counts and stamps included.
  LoadedCheckpoint from_cpu = load_checkpoint(cpu_path, Device::kCUDA);
  from_cpu.model->download();
  expect_same_rows(from_cpu.model->item_table()->export_rows(), cpu_rows, "CPU -> GPU");
  std::vector<float> expected, got;
  models.cpu->item_embeddings(expected);
  from_cpu.model->item_embeddings(got);
  EXPECT_LT(rel_l2(got, expected), kF32Tolerance);
  float losses[2];
  int k = 0;
  for (RetrievalModel* m : {models.cpu.get(), from_cpu.model.get()}) {
    m->zero_grad();
    losses[k++] = m->train_step(second, 3, 1);
    m->optimizer_step(adam, 1e-2f, 1.0f);
  }
  EXPECT_LT(std::fabs(losses[1] - losses[0]) / std::fabs(losses[0]), kLossTolerance)
      << "cpu " << losses[0] << " gpu " << losses[1];
  from_cpu.model->download();
  const TableRows c = models.cpu->item_table()->export_rows();
  const TableRows g = from_cpu.model->item_table()->export_rows();
  ASSERT_EQ(g.keys, c.keys);
  EXPECT_EQ(state_part(g, config.dim, 2 * config.dim, 1),
            state_part(c, config.dim, 2 * config.dim, 1));
  EXPECT_EQ(g.scores, c.scores);
  EXPECT_EQ(g.stamps, c.stamps);
}

// A small synthetic run on the GPU through the trainer: best-epoch copies, checkpoints and
// resuming all go through the table's host copy (download, upload).
RunConfig gpu_run(const std::string& name, int64_t epochs) {
  RunConfig config = test::small_run(
      (std::filesystem::path(testing::TempDir()) / ("genrec_cuda_dynamic_" + name)).string(),
      epochs, "cuda");
  config.model.item_embeddings = ItemStore::kDynamic;
  return config;
}

TEST(CudaModelDynamicItems, TrainingRunsBeatPopularityAndResume) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  for (const char* name : {"straight", "resumed"}) {
    std::filesystem::remove_all(gpu_run(name, 1).output_dir);
  }
  TrainingRun run = run_training(gpu_run("straight", 8));
  EXPECT_EQ(run.model->device(), Device::kCUDA);
  // As TrainingSynthetic.BeatsPopularityByAWideMargin on the CPU.
  EXPECT_GT(run.result.test.hr10, 2.0 * run.popularity.hr10)
      << "model " << run.result.test.format() << " vs popularity " << run.popularity.format();
  EXPECT_GT(run.result.test.ndcg10, 2.0 * run.popularity.ndcg10);
  // The saved model holds the trained table and loads on the CPU.
  LoadedCheckpoint saved = load_checkpoint(gpu_run("straight", 8).output_dir + "/model.ckpt");
  ASSERT_GT(saved.model->item_table()->size(), 0);
  expect_same_rows(saved.model->item_table()->export_rows(), run.model->item_table()->export_rows(),
                   "saved model");

  // 2 epochs, then resumed to 8 from the GPU's last checkpoint.
  run_training(gpu_run("resumed", 2));
  RunConfig resumed = gpu_run("resumed", 8);
  resumed.train.resume = true;
  TrainingRun second = run_training(resumed);
  const LoadedCheckpoint last = load_checkpoint(resumed.train.checkpoint_dir + "/last.ckpt");
  EXPECT_EQ(last.state.at("epoch").get<int64_t>(), 8);
  EXPECT_GT(second.result.test.hr10, 2.0 * second.popularity.hr10)
      << "model " << second.result.test.format() << " vs popularity " << second.popularity.format();
}

}  // namespace
}  // namespace genrec
