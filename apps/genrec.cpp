// The genrec command line: parsing and printing only; every subcommand is a library call.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>

#include <fmt/format.h>

#include "core/error.h"
#include "core/logging.h"
#include "data/converters.h"
#include "data/shard.h"
#include "data/synthetic.h"
#include "model/checkpoint.h"
#include "model/recommender.h"
#include "train/evaluator.h"
#include "train/pipeline.h"

using namespace genrec;

namespace {

void print_recommendations(RetrievalModel& model, const ItemVocabulary& vocabulary,
                           const SequenceDataset& dataset, int64_t user_index, int64_t k) {
  int64_t begin = dataset.offsets[user_index], end = dataset.offsets[user_index + 1];
  std::string recent;
  for (int64_t e = std::max(begin, end - 8); e < end; ++e)
    recent += fmt::format(" {}", dataset.items[e]);
  fmt::print("user {} ({} events, most recent:{})\n", dataset.user_ids[user_index], end - begin,
             recent);
  auto recs = recommend(model, vocabulary, dataset, user_index, k, /*exclude_history=*/false);
  fmt::print("top-{} recommendations:\n", k);
  for (size_t i = 0; i < recs.size(); ++i) {
    fmt::print("  {:2d}. item {:<10} score {:.4f}\n", i + 1, recs[i].item, recs[i].score);
  }
}

int64_t find_user(const SequenceDataset& dataset, int64_t raw_user) {
  for (int64_t u = 0; u < dataset.num_users(); ++u) {
    if (dataset.user_ids[u] == raw_user) return u;
  }
  fail("user {} is not in the data", raw_user);
}

void print_result(const char* name, const TrainingRun& run) {
  const TrainResult& r = run.result;
  fmt::print("best validation (epoch {}): {}\n", r.best_epoch, r.validation.format());
  fmt::print("test  model:      {}\n", r.test.format());
  fmt::print("test  popularity: {}\n", run.popularity.format());
  fmt::print(
      "{} HR@10={:.4f} NDCG@10={:.4f} HR@50={:.4f} NDCG@50={:.4f} epochs={} seconds={:.0f}\n", name,
      r.test.hr10, r.test.ndcg10, r.test.hr50, r.test.ndcg50, r.epochs_run, r.seconds);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"genrec: train and serve HSTU generative recommenders"};
  app.require_subcommand(1);

  // demo
  auto* demo = app.add_subcommand("demo", "Generate synthetic data, train, evaluate, recommend");
  RunConfig demo_config;
  demo_config.data.synthetic = true;
  demo_config.output_dir = "runs/demo";
  demo_config.model.max_len = 50;
  demo_config.train.epochs = 20;
  demo_config.train.eval_every = 5;
  demo->add_option("--out", demo_config.output_dir, "Output directory for checkpoints")
      ->capture_default_str();
  demo->add_option("--epochs", demo_config.train.epochs, "Training epochs")->capture_default_str();
  demo->add_option("--users", demo_config.data.synthetic_config.num_users, "Synthetic users")
      ->capture_default_str();
  demo->add_option("--items", demo_config.data.synthetic_config.num_items, "Synthetic items")
      ->capture_default_str();
  demo->add_option("--seed", demo_config.train.seed, "Random seed")->capture_default_str();
  demo->add_option("--device", demo_config.device, "cpu, cuda or auto")->capture_default_str();

  // synth
  auto* synth = app.add_subcommand("synth", "Write a synthetic dataset to a shard");
  SyntheticConfig synth_config;
  std::string synth_out;
  synth->add_option("--out", synth_out, "Output shard (.grs)")->required();
  synth->add_option("--users", synth_config.num_users, "Users")->capture_default_str();
  synth->add_option("--items", synth_config.num_items, "Items")->capture_default_str();
  synth->add_option("--clusters", synth_config.num_clusters, "Item clusters")
      ->capture_default_str();
  synth->add_option("--seed", synth_config.seed, "Random seed")->capture_default_str();

  // convert
  auto* convert = app.add_subcommand(
      "convert", "Convert MovieLens, sequence text, CSV/TSV or JSONL to a shard");
  std::string convert_in, convert_out;
  convert->add_option("--in", convert_in, "Input file (format from its name)")
      ->required()
      ->check(CLI::ExistingFile);
  convert->add_option("--out", convert_out, "Output shard (.grs)")->required();

  // train
  auto* train = app.add_subcommand("train", "Train a retrieval model from a YAML config");
  std::string config_path, data_override, out_override;
  int64_t epochs_override = 0;
  train->add_option("--config", config_path, "YAML config")->required()->check(CLI::ExistingFile);
  train->add_option("--data", data_override, "Override data.path");
  train->add_option("--out", out_override, "Override output_dir");
  train->add_option("--epochs", epochs_override, "Override train.epochs");
  std::string device_override;
  train->add_option("--device", device_override, "Override device: cpu, cuda or auto");
  std::vector<std::string> overrides;
  train->add_option("--set", overrides, "Override a config key, e.g. --set model.time_bias=false");
  std::string result_name = "result";
  train->add_option("--name", result_name, "Name printed at the start of the result line");

  // eval
  auto* eval = app.add_subcommand("eval", "Evaluate a checkpoint with leave-one-out full ranking");
  std::string eval_ckpt, eval_data, eval_split = "test";
  eval->add_option("--checkpoint", eval_ckpt, "Checkpoint file")
      ->required()
      ->check(CLI::ExistingFile);
  eval->add_option("--data", eval_data, "Data the model was trained on")
      ->required()
      ->check(CLI::ExistingFile);
  std::string eval_device = "auto";
  eval->add_option("--device", eval_device, "cpu, cuda or auto")->capture_default_str();
  eval->add_option("--split", eval_split, "test or validation")
      ->check(CLI::IsMember({"test", "validation"}))
      ->capture_default_str();

  // recommend
  auto* rec = app.add_subcommand("recommend", "Top-k items for a user from their history");
  std::string rec_ckpt, rec_data;
  int64_t rec_user = 0, rec_k = 10;
  bool rec_exclude = false;
  rec->add_option("--checkpoint", rec_ckpt, "Checkpoint file")
      ->required()
      ->check(CLI::ExistingFile);
  rec->add_option("--data", rec_data, "Data holding the user's history")
      ->required()
      ->check(CLI::ExistingFile);
  rec->add_option("--user", rec_user, "Raw user id")->required();
  rec->add_option("--k", rec_k, "How many items")->capture_default_str();
  rec->add_flag("--exclude-history", rec_exclude, "Never recommend items the user already has");

  CLI11_PARSE(app, argc, argv);
  try {
    if (*demo) {
      fmt::print("genrec demo: synthetic data, HSTU retrieval model, device {}\n",
                 device_name(parse_device(demo_config.device)));
      std::fflush(stdout);
      TrainingRun run = run_training(demo_config);
      print_result("demo", run);
      print_recommendations(*run.model, run.vocabulary, run.dataset, 0, 10);
    } else if (*synth) {
      SequenceDataset dataset = generate_synthetic(synth_config);
      write_shard(synth_out, dataset);
      fmt::print("wrote {} users, {} events to {}\n", dataset.num_users(), dataset.num_events(),
                 synth_out);
    } else if (*convert) {
      SequenceDataset dataset = read_any(convert_in);
      write_shard(convert_out, dataset);
      fmt::print("wrote {} users, {} events to {}\n", dataset.num_users(), dataset.num_events(),
                 convert_out);
    } else if (*train) {
      RunConfig config = load_run_config(config_path, overrides);
      if (!data_override.empty()) config.data.path = data_override, config.data.synthetic = false;
      if (!out_override.empty()) config.output_dir = config.train.checkpoint_dir = out_override;
      if (epochs_override > 0) config.train.epochs = epochs_override;
      if (!device_override.empty()) config.device = device_override;
      print_result(result_name.c_str(), run_training(config));
    } else if (*eval) {
      LoadedCheckpoint ckpt = load_checkpoint(eval_ckpt, parse_device(eval_device));
      SequenceDataset dataset = read_any(eval_data);
      Split split = eval_split == "test" ? Split::kTest : Split::kValidation;
      auto windows = leave_one_out_windows(dataset, split, ckpt.model->config().max_len);
      fmt::print("{} {}\n", eval_split,
                 evaluate(*ckpt.model, dataset, ckpt.vocabulary, windows).format());
    } else if (*rec) {
      LoadedCheckpoint ckpt = load_checkpoint(rec_ckpt);
      SequenceDataset dataset = read_any(rec_data);
      int64_t user = find_user(dataset, rec_user);
      auto recs = recommend(*ckpt.model, ckpt.vocabulary, dataset, user, rec_k, rec_exclude);
      for (size_t i = 0; i < recs.size(); ++i)
        fmt::print("{}\t{}\t{:.4f}\n", i + 1, recs[i].item, recs[i].score);
    }
  } catch (const std::exception& e) {
    log_error("{}", e.what());
    return 1;
  }
  return 0;
}
