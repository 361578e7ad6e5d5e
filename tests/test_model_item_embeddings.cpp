// The retrieval model with a dynamic item table against the same model with the static one.
// Loaded with the same values, they must agree exactly where lazy (sparse) Adam and dense Adam
// coincide: the loss, the dense parameters and every row after the first step, gradient
// clipping included. Afterwards they legitimately differ, and the tests pin down how: dense
// Adam keeps moving rows on momentum and bias-corrects with the global step, the sparse table
// leaves untouched rows alone and bias-corrects with each row's own update count.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <set>

#include "embedding/dynamic_table.h"
#include "model/checkpoint.h"
#include "model/retrieval_model.h"
#include "model/retrieval_randomness.h"

namespace genrec {
namespace {

constexpr int64_t kItems = 40, kDim = 8;
constexpr uint64_t kSeed = 9;
constexpr float kLr = 0.01f;

RetrievalConfig tiny_config(ItemStore store) {
  RetrievalConfig c;
  c.num_items = kItems;
  c.dim = c.dim_qk = c.dim_v = kDim;
  c.num_layers = 1;
  c.max_len = 6;
  c.num_negatives = 5;
  c.dropout = 0.2f;
  c.item_embeddings = store;
  return c;
}

TokenBatch training_batch(const std::vector<std::vector<int64_t>>& sequences) {
  TokenBatch batch;
  for (const auto& s : sequences) {
    for (size_t t = 0; t + 1 < s.size(); ++t) {
      batch.items.push_back(s[t]);
      batch.timestamps.push_back(static_cast<int64_t>(t));
      batch.targets.push_back(s[t + 1]);
    }
    batch.offsets.push_back(batch.num_tokens());
  }
  return batch;
}

// Items whose rows a training step reads: inputs, targets and the step's negatives.
std::set<int64_t> touched_by(const TokenBatch& batch, int64_t step) {
  std::set<int64_t> ids(batch.items.begin(), batch.items.end());
  ids.insert(batch.targets.begin(), batch.targets.end());
  for (int64_t id : sample_negatives(tiny_config(ItemStore::kStatic), batch, step_key(kSeed, step)))
    ids.insert(id);
  return ids;
}

std::vector<float> table_row(const DynamicTable& table, int64_t id, float* state = nullptr) {
  std::vector<float> row(kDim);
  uint8_t found = 0;
  const auto key = static_cast<uint64_t>(id);
  table.find(&key, 1, row.data(), &found, state);
  EXPECT_TRUE(found) << "item " << id << " is not in the table";
  return row;
}

// A static and a dynamic model holding the same values: dense parameters copied by name, the
// static rows 1..V written into the dynamic table (with zero Adam state).
struct Twins {
  std::unique_ptr<RetrievalModel> dense =
      make_retrieval_model(tiny_config(ItemStore::kStatic), Device::kCPU);
  std::unique_ptr<RetrievalModel> sparse =
      make_retrieval_model(tiny_config(ItemStore::kDynamic), Device::kCPU);
  cpu::AdamConfig adam;

  Twins() {
    dense->initialize(3);
    sparse->initialize(3);
    ParameterSet& from = dense->params();
    ParameterSet& into = sparse->params();
    for (int i = 0; i < into.count(); ++i) {
      std::copy_n(from.value(from.find(into.info(i).name)), into.info(i).numel, into.value(i));
    }
    std::vector<int64_t> ids(kItems);
    std::iota(ids.begin(), ids.end(), int64_t{1});
    sparse->item_table()->insert_or_assign(ids.data(), dense_rows() + kDim, kItems);
  }

  const float* dense_rows() {
    return dense->params().value(dense->params().find("item_embedding"));
  }
  std::vector<float> dense_row(int64_t id) {
    return {dense_rows() + id * kDim, dense_rows() + (id + 1) * kDim};
  }
  std::vector<float> sparse_row(int64_t id, float* state = nullptr) {
    return table_row(*sparse->item_table(), id, state);
  }

  // One step on both; returns the two losses.
  std::pair<float, float> step(const TokenBatch& batch, int64_t step, float grad_clip = 0.0f) {
    dense->zero_grad();
    sparse->zero_grad();
    const float a = dense->train_step(batch, kSeed, step);
    const float b = sparse->train_step(batch, kSeed, step);
    dense->optimizer_step(adam, kLr, grad_clip);
    sparse->optimizer_step(adam, kLr, grad_clip);
    return {a, b};
  }
};

const TokenBatch kFirst = training_batch({{1, 2, 3, 4, 5, 6}, {7, 8, 3, 9}});
const TokenBatch kSecond = training_batch({{20, 21, 22, 23, 24}, {25, 26}});

void expect_first_step_agrees(float grad_clip) {
  Twins twins;
  const auto [dense_loss, sparse_loss] = twins.step(kFirst, 0, grad_clip);
  EXPECT_EQ(dense_loss, sparse_loss);
  const ParameterSet& into = twins.sparse->params();
  for (int i = 0; i < into.count(); ++i) {
    const ParameterSet& from = twins.dense->params();
    const float* a = from.value(from.find(into.info(i).name));
    for (int64_t j = 0; j < into.info(i).numel; ++j) {
      // Clipping scales by the global norm, whose float64 sum adds the item rows in another
      // order: equal to a few ulps.
      ASSERT_NEAR(into.value(i)[j], a[j], 1e-7f) << into.info(i).name << "[" << j << "]";
    }
  }
  const std::set<int64_t> touched = touched_by(kFirst, 0);
  for (int64_t id = 1; id <= kItems; ++id) {
    float state[2 * kDim + 1];
    const std::vector<float> sparse = twins.sparse_row(id, state);
    const std::vector<float> dense = twins.dense_row(id);
    // The dense gradient row is a float sum in token order, the sparse one a float64 sum per
    // id: after Adam's g / (|g| + eps) that is far below 1e-6 of a 1e-2 step.
    for (int64_t j = 0; j < kDim; ++j) ASSERT_NEAR(sparse[j], dense[j], 1e-6f) << id;
    EXPECT_EQ(state[2 * kDim], touched.count(id) ? 1.0f : 0.0f) << "update count of " << id;
  }
}

TEST(ModelItemEmbeddings, FirstStepMatchesTheStaticTable) {
  expect_first_step_agrees(0.0f);
}

TEST(ModelItemEmbeddings, ClippingCoversTheTableRows) {
  // Small enough that the clipped gradients are near Adam's eps, where the update depends on
  // their scale: a norm without the item rows would give different steps.
  expect_first_step_agrees(1e-6f);
}

TEST(ModelItemEmbeddings, UntouchedRowsAreNotModified) {
  Twins twins;
  std::vector<std::vector<float>> before;
  for (int64_t id = 1; id <= kItems; ++id) before.push_back(twins.sparse_row(id));
  twins.step(kFirst, 0);
  const std::set<int64_t> touched = touched_by(kFirst, 0);
  ASSERT_LT(touched.size(), static_cast<size_t>(kItems));
  int64_t moved = 0;
  for (int64_t id = 1; id <= kItems; ++id) {
    if (touched.count(id)) {
      moved += twins.sparse_row(id) != before[id - 1];
    } else {
      EXPECT_EQ(twins.sparse_row(id), before[id - 1]) << "untouched item " << id << " changed";
    }
  }
  EXPECT_EQ(moved, static_cast<int64_t>(touched.size()));
}

TEST(ModelItemEmbeddings, LaterStepsAreLazyAdamWithPerRowBiasCorrection) {
  Twins twins;
  twins.step(kFirst, 0);
  std::vector<std::vector<float>> sparse_before, dense_before;
  for (int64_t id = 1; id <= kItems; ++id) {
    sparse_before.push_back(twins.sparse_row(id));
    dense_before.push_back(twins.dense_row(id));
  }
  twins.step(kSecond, 1);
  const std::set<int64_t> first = touched_by(kFirst, 0), second = touched_by(kSecond, 1);
  int64_t only_first = 0, only_second = 0;
  for (int64_t id = 1; id <= kItems; ++id) {
    if (first.count(id) && !second.count(id)) {
      // Sparse: no gradient, no update. Dense Adam moves the row on its momentum.
      ++only_first;
      EXPECT_EQ(twins.sparse_row(id), sparse_before[id - 1]) << id;
      EXPECT_NE(twins.dense_row(id), dense_before[id - 1]) << id;
    }
    if (second.count(id) && !first.count(id)) {
      // A row's first update: with its own count the sparse step is Adam's first step,
      // lr · g / (|g| + eps) ≈ lr per element. Dense Adam corrects with the global step 2
      // over moments that missed step 1: 0.1/(1-0.9²) / √(0.02/(1-0.98²)) ≈ 0.74 lr.
      ++only_second;
      const std::vector<float> sparse = twins.sparse_row(id), dense = twins.dense_row(id);
      for (int64_t j = 0; j < kDim; ++j) {
        const float sparse_step = std::fabs(sparse[j] - sparse_before[id - 1][j]);
        const float dense_step = std::fabs(dense[j] - dense_before[id - 1][j]);
        if (sparse_step == 0.0f) {  // input dropout zeroed the element's only gradient
          EXPECT_EQ(dense_step, 0.0f) << id;
          continue;
        }
        EXPECT_NEAR(sparse_step, kLr, 1e-4f * kLr) << id;
        EXPECT_NEAR(dense_step, 0.7406f * kLr, 1e-3f * kLr) << id;
      }
    }
  }
  ASSERT_GT(only_first, 0);
  ASSERT_GT(only_second, 0);
}

TEST(ModelItemEmbeddings, EvaluationScoresEveryItemWithoutInserting) {
  auto model = make_retrieval_model(tiny_config(ItemStore::kDynamic), Device::kCPU);
  model->initialize(kSeed);
  std::vector<float> before;
  model->item_embeddings(before);
  ASSERT_EQ(before.size(), static_cast<size_t>(kItems * kDim));
  EXPECT_EQ(model->item_table()->size(), 0) << "evaluation inserted rows";

  // Training inserts exactly the rows it reads, with the rows evaluation saw (keyed by id and
  // seed, not by the order of insertion).
  model->zero_grad();
  model->train_step(kFirst, kSeed, 0);
  const std::set<int64_t> touched = touched_by(kFirst, 0);
  EXPECT_EQ(model->item_table()->size(), static_cast<int64_t>(touched.size()));
  std::vector<float> after;
  model->item_embeddings(after);
  EXPECT_EQ(after, before);

  // Deterministic per seed.
  auto same = make_retrieval_model(tiny_config(ItemStore::kDynamic), Device::kCPU);
  auto other = make_retrieval_model(tiny_config(ItemStore::kDynamic), Device::kCPU);
  same->initialize(kSeed);
  other->initialize(kSeed + 1);
  std::vector<float> a, b;
  same->item_embeddings(a);
  other->item_embeddings(b);
  EXPECT_EQ(a, before);
  EXPECT_NE(b, before);
}

TEST(ModelItemEmbeddings, CheckpointRestoresRowsStateAndUnseenItems) {
  auto model = make_retrieval_model(tiny_config(ItemStore::kDynamic), Device::kCPU);
  model->initialize(kSeed);
  cpu::AdamConfig adam;
  model->zero_grad();
  model->train_step(kFirst, kSeed, 0);
  model->optimizer_step(adam, kLr, 0.0f);
  std::vector<int64_t> raw(kItems);
  std::iota(raw.begin(), raw.end(), int64_t{100});
  const std::string path =
      (std::filesystem::path(testing::TempDir()) / "genrec_dynamic_items.ckpt").string();
  save_checkpoint(path, *model, ItemVocabulary::from_raw_ids(raw), {});

  LoadedCheckpoint loaded = load_checkpoint(path);
  ASSERT_NE(loaded.model->item_table(), nullptr);
  const TableRows a = model->item_table()->export_rows();
  const TableRows b = loaded.model->item_table()->export_rows();
  EXPECT_EQ(a.keys, b.keys);
  EXPECT_EQ(a.values, b.values);
  EXPECT_EQ(a.states, b.states);
  EXPECT_EQ(a.scores, b.scores);
  EXPECT_EQ(a.stamps, b.stamps);
  ASSERT_LT(a.size(), kItems) << "the test needs items the step did not touch";
  std::vector<float> rows_a, rows_b;
  model->item_embeddings(rows_a);
  loaded.model->item_embeddings(rows_b);
  EXPECT_EQ(rows_a, rows_b) << "unseen items lost their initial rows (seed not restored?)";

  // Both continue identically.
  for (auto* m : {model.get(), loaded.model.get()}) {
    m->zero_grad();
    m->train_step(kSecond, kSeed, 1);
    m->optimizer_step(adam, kLr, 0.0f);
  }
  EXPECT_EQ(model->item_table()->export_rows().values,
            loaded.model->item_table()->export_rows().values);
  EXPECT_EQ(model->params().values(), loaded.model->params().values());
}

}  // namespace
}  // namespace genrec
