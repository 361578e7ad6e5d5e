// Validation picks the best epoch by NDCG@10; the test split is scored once, at the end, with
// the best parameters, so test figures never steer training.
#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <filesystem>

#include <fmt/format.h>

#include "core/error.h"
#include "core/logging.h"
#include "embedding/dynamic_table.h"
#include "model/checkpoint.h"
#include "train/progress.h"

namespace genrec {
namespace {

nlohmann::json metrics_json(const RankingMetrics& m) {
  return {{"hr10", m.hr10},     {"ndcg10", m.ndcg10}, {"hr50", m.hr50},
          {"ndcg50", m.ndcg50}, {"mrr", m.mrr},       {"users", m.users}};
}

RankingMetrics metrics_from_json(const nlohmann::json& j) {
  RankingMetrics m;
  m.hr10 = j.at("hr10");
  m.ndcg10 = j.at("ndcg10");
  m.hr50 = j.at("hr50");
  m.ndcg50 = j.at("ndcg50");
  m.mrr = j.at("mrr");
  m.users = j.at("users");
  return m;
}

// Copies a checkpoint's model (parameters, optimizer state, seed, dynamic item table) into a
// model of the same layout.
void restore(RetrievalModel& model, const RetrievalModel& from, const std::string& path) {
  GENREC_CHECK(model.config().item_embeddings == from.config().item_embeddings,
               "checkpoint {} holds a {} item table; this model has a {} one", path,
               item_store_name(from.config().item_embeddings),
               item_store_name(model.config().item_embeddings));
  GENREC_CHECK(model.params().numel() == from.params().numel(),
               "checkpoint {} holds {} parameters; this model has {} (different config?)", path,
               from.params().numel(), model.params().numel());
  model.initialize(from.seed());
  ParameterSet& into = model.params();
  into.values() = from.params().values();
  into.adam_m() = from.params().adam_m();
  into.adam_v() = from.params().adam_v();
  into.set_adam_steps(from.params().adam_steps());
  if (DynamicTable* items = model.item_table()) {
    items->insert_rows(from.item_table()->export_rows());
    items->set_step(from.item_table()->step());
  }
  model.upload();
}

// What the trainer keeps of the best epoch: the parameter values and a dynamic item table's
// rows.
struct BestParameters {
  std::vector<float> values;
  TableRows item_rows;
};

BestParameters best_of(const RetrievalModel& model) {
  BestParameters best{model.params().values(), {}};
  if (const DynamicTable* items = model.item_table()) best.item_rows = items->export_rows();
  return best;
}

void put_back(RetrievalModel& model, const BestParameters& best) {
  model.params().values() = best.values;
  if (DynamicTable* items = model.item_table()) {
    items->clear();
    items->insert_rows(best.item_rows);
  }
  model.upload();
}

}  // namespace

Trainer::Trainer(RetrievalModel& model, const SequenceDataset& dataset,
                 const ItemVocabulary& vocabulary, TrainerConfig config)
    : model_(model), dataset_(dataset), vocabulary_(vocabulary), config_(std::move(config)) {
  GENREC_CHECK(config_.epochs > 0, "epochs must be positive");
  GENREC_CHECK(config_.batch_size > 0 || config_.max_tokens > 0,
               "batch_size or max_tokens must be positive");
  GENREC_CHECK(config_.lr > 0.0f, "lr must be positive");
  GENREC_CHECK(config_.eval_every > 0, "eval_every must be positive");
}

float Trainer::learning_rate(int64_t step, int64_t total_steps) const {
  if (step < config_.warmup_steps) {
    return config_.lr * static_cast<float>(step + 1) / static_cast<float>(config_.warmup_steps);
  }
  if (!config_.cosine_decay) return config_.lr;
  double progress = static_cast<double>(step - config_.warmup_steps) /
                    std::max<double>(1.0, static_cast<double>(total_steps - config_.warmup_steps));
  return static_cast<float>(config_.lr * 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, progress))));
}

void Trainer::save(const std::string& name, int64_t epoch, int64_t step, const TrainResult& result,
                   int64_t stale) const {
  if (config_.checkpoint_dir.empty()) return;
  nlohmann::json state = {{"epoch", epoch},
                          {"step", step},
                          {"best_epoch", result.best_epoch},
                          {"best_validation", metrics_json(result.validation)},
                          {"stale", stale}};
  save_checkpoint((std::filesystem::path(config_.checkpoint_dir) / name).string(), model_,
                  vocabulary_, state);
}

TrainResult Trainer::fit() {
  const auto start = std::chrono::steady_clock::now();
  const int64_t max_len = model_.config().max_len;
  auto train = leave_one_out_windows(dataset_, Split::kTrain, max_len);
  auto validation = leave_one_out_windows(dataset_, Split::kValidation, max_len);
  auto test = leave_one_out_windows(dataset_, Split::kTest, max_len);
  GENREC_CHECK(!train.empty() && !validation.empty(),
               "no user has the 3+ events that leave-one-out training needs");
  Batcher batcher(dataset_, vocabulary_, train,
                  {config_.batch_size, config_.max_tokens, /*shuffle=*/true, config_.seed});

  TrainResult result;
  result.validation.ndcg10 = -1.0;
  int64_t first_epoch = 0, step = 0, stale = 0;
  model_.download();
  BestParameters best = best_of(model_);
  if (!config_.checkpoint_dir.empty()) {
    std::filesystem::create_directories(config_.checkpoint_dir);
    auto last = std::filesystem::path(config_.checkpoint_dir) / "last.ckpt";
    if (config_.resume && std::filesystem::exists(last)) {
      LoadedCheckpoint ckpt = load_checkpoint(last.string());
      restore(model_, *ckpt.model, last.string());
      first_epoch = ckpt.state.at("epoch");
      step = ckpt.state.at("step");
      stale = ckpt.state.at("stale");
      result.best_epoch = ckpt.state.at("best_epoch");
      result.validation = metrics_from_json(ckpt.state.at("best_validation"));
      auto best_path = std::filesystem::path(config_.checkpoint_dir) / "best.ckpt";
      best = std::filesystem::exists(best_path)
                 ? best_of(*load_checkpoint(best_path.string()).model)
                 : best_of(model_);
      log_info("resumed from {} at epoch {}, step {}", last.string(), first_epoch, step);
    }
  }

  batcher.start_epoch(0);
  const int64_t total_steps = batcher.num_batches() * config_.epochs;
  cpu::AdamConfig adam{config_.lr,        config_.beta1, config_.beta2, 1e-8f, config_.weight_decay,
                       /*decoupled=*/true};
  for (int64_t epoch = first_epoch; epoch < config_.epochs; ++epoch) {
    auto epoch_start = std::chrono::steady_clock::now();
    batcher.start_epoch(epoch);
    PrefetchLoader loader(batcher);
    ProgressBar bar(fmt::format("epoch {}/{}", epoch + 1, config_.epochs), batcher.num_batches(),
                    config_.progress);
    double loss_sum = 0;
    int64_t batches = 0, tokens = 0;
    while (auto window_batch = loader.next()) {
      TokenBatch batch = next_item_batch(*window_batch);
      model_.zero_grad();
      float loss = model_.train_step(batch, config_.seed, step);
      GENREC_CHECK(std::isfinite(loss), "loss became {} at step {} (lower lr or set grad_clip)",
                   loss, step);
      model_.optimizer_step(adam, learning_rate(step, total_steps), config_.grad_clip);
      ++step, ++batches;
      loss_sum += loss;
      tokens += batch.num_tokens();
      bar.update(batches, fmt::format("loss {:.4f}", loss_sum / batches));
    }
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_start).count();
    result.epochs_run = epoch + 1;
    bool evaluate_now = (epoch + 1) % config_.eval_every == 0 || epoch + 1 == config_.epochs;
    std::string summary = fmt::format("epoch {}/{} loss {:.4f} {:.1f}s {:.0f} tokens/s", epoch + 1,
                                      config_.epochs, loss_sum / std::max<int64_t>(batches, 1),
                                      seconds, tokens / std::max(seconds, 1e-9));
    if (!evaluate_now) {
      log_info("{}", summary);
      continue;
    }
    RankingMetrics val =
        evaluate(model_, dataset_, vocabulary_, validation, config_.eval_batch_size);
    bool improved = val.ndcg10 > result.validation.ndcg10;
    model_.download();  // once: the best copy and both checkpoints read the host parameters
    if (improved) {
      result.validation = val;
      result.best_epoch = epoch + 1;
      best = best_of(model_);
      stale = 0;
      save("best.ckpt", epoch + 1, step, result, stale);
    } else {
      ++stale;
    }
    save("last.ckpt", epoch + 1, step, result, stale);
    log_info("{} | valid {}{}", summary, val.format(), improved ? " *" : "");
    if (config_.patience > 0 && stale >= config_.patience) {
      log_info("no improvement in {} validations; stopping", stale);
      break;
    }
  }
  put_back(model_, best);
  result.test = evaluate(model_, dataset_, vocabulary_, test, config_.eval_batch_size);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace genrec
