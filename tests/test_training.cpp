// End-to-end training checks on small synthetic data: the model must clearly beat the
// most-popular baseline, checkpoints must round-trip exactly, and resuming must continue
// the same run.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "data/synthetic.h"
#include "embedding/dynamic_table.h"
#include "model/checkpoint.h"
#include "model/recommender.h"
#include "small_run.h"
#include "train/pipeline.h"
#include "train/run_config.h"

namespace genrec {
namespace {

std::string temp_dir(const std::string& name) {
  auto dir = std::filesystem::path(testing::TempDir()) / ("genrec_" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

// The CPU path is the bit-exact reference these tests pin down.
RunConfig small_run(const std::string& out, int64_t epochs) {
  return test::small_run(out, epochs, "cpu");
}

TEST(TrainingSynthetic, BeatsPopularityByAWideMargin) {
  for (ItemStore store : {ItemStore::kStatic, ItemStore::kDynamic}) {
    SCOPED_TRACE(item_store_name(store));
    RunConfig config = small_run(temp_dir("beats"), 8);
    config.model.item_embeddings = store;
    TrainingRun run = run_training(config);
    // The generator's Markov structure makes the next item far more predictable from the
    // previous one than from popularity; a working model must find that.
    EXPECT_GT(run.result.test.hr10, 2.0 * run.popularity.hr10)
        << "model " << run.result.test.format() << " vs popularity " << run.popularity.format();
    EXPECT_GT(run.result.test.ndcg10, 2.0 * run.popularity.ndcg10);
    EXPECT_GT(run.result.validation.users, 0);
  }
}

TEST(TrainingCheckpoint, RoundTripsExactlyAndDetectsCorruption) {
  std::string dir = temp_dir("ckpt");
  TrainingRun run = run_training(small_run(dir, 2));
  std::string path = dir + "/model.ckpt";
  LoadedCheckpoint loaded = load_checkpoint(path);
  EXPECT_EQ(loaded.model->params().values(), run.model->params().values());
  EXPECT_EQ(loaded.vocabulary.raw_ids(), run.vocabulary.raw_ids());
  EXPECT_EQ(loaded.model->config().dim, 32);

  std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
  file.seekp(200);
  file.put('\x7f');
  file.close();
  try {
    load_checkpoint(path);
    FAIL() << "corruption not detected";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("checksum"), std::string::npos) << e.what();
  }
}

TEST(TrainingCheckpoint, ResumeContinuesTheSameRun) {
  // 4 epochs straight vs 2 epochs, then resume to 4: identical parameters.
  std::string a = temp_dir("straight"), b = temp_dir("resumed");
  TrainingRun straight = run_training(small_run(a, 4));
  run_training(small_run(b, 2));
  RunConfig resumed = small_run(b, 4);
  resumed.train.resume = true;
  TrainingRun second = run_training(resumed);
  LoadedCheckpoint last_a = load_checkpoint(a + "/last.ckpt");
  LoadedCheckpoint last_b = load_checkpoint(b + "/last.ckpt");
  EXPECT_EQ(last_a.model->params().values(), last_b.model->params().values());
  EXPECT_EQ(last_a.state.at("step"), last_b.state.at("step"));
}

void expect_same_rows(const DynamicTable& a, const DynamicTable& b) {
  const TableRows x = a.export_rows(), y = b.export_rows();
  EXPECT_EQ(x.keys, y.keys);
  EXPECT_EQ(x.values, y.values);
  EXPECT_EQ(x.states, y.states);
  EXPECT_EQ(x.scores, y.scores);
  EXPECT_EQ(x.stamps, y.stamps);
}

TEST(TrainingCheckpoint, DynamicItemTableRoundTripsAndResumesExactly) {
  std::string a = temp_dir("dynamic_straight"), b = temp_dir("dynamic_resumed");
  RunConfig straight_config = small_run(a, 4);
  straight_config.model.item_embeddings = ItemStore::kDynamic;
  TrainingRun straight = run_training(straight_config);

  LoadedCheckpoint saved = load_checkpoint(a + "/model.ckpt");
  EXPECT_EQ(saved.model->config().item_embeddings, ItemStore::kDynamic);
  EXPECT_EQ(saved.model->params().values(), straight.model->params().values());
  expect_same_rows(*saved.model->item_table(), *straight.model->item_table());

  RunConfig first = straight_config, resumed = straight_config;
  first.output_dir = first.train.checkpoint_dir = resumed.output_dir =
      resumed.train.checkpoint_dir = b;
  first.train.epochs = 2;
  run_training(first);
  resumed.train.resume = true;
  run_training(resumed);
  LoadedCheckpoint last_a = load_checkpoint(a + "/last.ckpt");
  LoadedCheckpoint last_b = load_checkpoint(b + "/last.ckpt");
  EXPECT_EQ(last_a.model->params().values(), last_b.model->params().values());
  EXPECT_EQ(last_a.model->params().adam_m(), last_b.model->params().adam_m());
  expect_same_rows(*last_a.model->item_table(), *last_b.model->item_table());
  EXPECT_EQ(last_a.state.at("step"), last_b.state.at("step"));

  // A static run cannot resume from a dynamic checkpoint.
  RunConfig mismatched = small_run(b, 6);
  mismatched.train.resume = true;
  try {
    run_training(mismatched);
    FAIL() << "resumed a static model from a dynamic checkpoint";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("holds a dynamic item table"), std::string::npos)
        << e.what();
  }
}

TEST(TrainingConfig, ParsesSectionsAndOverrides) {
  RunConfig c = parse_run_config(
      "output_dir: out\ndata:\n  path: x.txt\nmodel:\n  dim: 32\n  dropout: 0.3\ntrain:\n  "
      "epochs: 7\n  lr: 0.01\n",
      "t.yaml", {"model.num_layers=3", "train.epochs=9"});
  EXPECT_EQ(c.data.path, "x.txt");
  EXPECT_EQ(c.model.dim, 32);
  EXPECT_FLOAT_EQ(c.model.dropout, 0.3f);
  EXPECT_EQ(c.model.num_layers, 3);
  EXPECT_EQ(c.train.epochs, 9);
  EXPECT_FLOAT_EQ(c.train.lr, 0.01f);
  EXPECT_EQ(c.train.checkpoint_dir, "out");
  EXPECT_EQ(c.model.item_embeddings, ItemStore::kStatic);
  EXPECT_EQ(parse_run_config("data:\n  path: x\nmodel:\n  item_embeddings: dynamic\n", "t.yaml")
                .model.item_embeddings,
            ItemStore::kDynamic);
  EXPECT_EQ(parse_run_config("data:\n  path: x\n", "t.yaml", {"model.item_embeddings=dynamic"})
                .model.item_embeddings,
            ItemStore::kDynamic);
}

void expect_config_error(const std::string& yaml, const std::string& needle) {
  try {
    parse_run_config(yaml, "bad.yaml");
    FAIL() << "no error for:\n" << yaml;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(TrainingConfig, ErrorsNameFileLineAndKey) {
  expect_config_error("data:\n  path: x\nmodel:\n  dimm: 3\n",
                      "bad.yaml:4: unknown key 'model.dimm'");
  expect_config_error("data:\n  path: x\nmodel:\n  dim: abc\n",
                      "bad.yaml:4: model.dim: 'abc' is not an integer");
  expect_config_error("data:\n  path: x\ntrain:\n  lr: -1\n", "train.lr must be positive");
  expect_config_error("model:\n  dim: 8\n", "data needs a path");
  expect_config_error("data: [1, 2\n", "YAML syntax error");
  expect_config_error("data:\n  path: x\nmodel:\n  dropout: 1.5\n", "dropout must be in [0, 1)");
  expect_config_error("data:\n  path: x\nmodel:\n  item_embeddings: sparse\n",
                      "bad.yaml: model.item_embeddings must be static or dynamic, got 'sparse'");
}

}  // namespace
}  // namespace genrec

namespace genrec {
namespace {

TEST(TrainingRecommend, ExcludesTheWholeHistoryNotOnlyTheEncodedWindow) {
  SequenceDataset dataset;
  dataset.add_user(7, {10, 11, 12, 13, 14, 15}, {1, 2, 3, 4, 5, 6}, {0, 0, 0, 0, 0, 0});
  dataset.add_user(8, {16, 17, 18}, {1, 2, 3}, {0, 0, 0});
  ItemVocabulary vocabulary = ItemVocabulary::build(dataset);
  RetrievalConfig config;
  config.num_items = vocabulary.size();
  config.dim = config.dim_qk = config.dim_v = 8;
  config.max_len = 2;  // the model reads only items 14 and 15
  auto model = make_retrieval_model(config, Device::kCPU);
  model->params().initialize(4);
  auto recs = recommend(*model, vocabulary, dataset, 0, 3, /*exclude_history=*/true);
  ASSERT_EQ(recs.size(), 3u);
  for (const Recommendation& r : recs) EXPECT_GE(r.item, 16) << "recommended history item";
}

}  // namespace
}  // namespace genrec
