// Trainer: epochs of shuffled jagged batches, Adam with warm-up and an optional cosine decay,
// periodic full-ranking validation, best-model selection, checkpoints and exact resumption.
#pragma once

#include <cstdint>
#include <string>

#include "data/batcher.h"
#include "model/retrieval_model.h"
#include "train/evaluator.h"

namespace genrec {

struct TrainerConfig {
  int64_t epochs = 100;
  int64_t batch_size = 128;  // windows per batch
  int64_t max_tokens = 0;    // > 0: token-balanced batches instead
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.98f;
  float weight_decay = 0.0f;
  int64_t warmup_steps = 0;
  bool cosine_decay = false;  // decay to 0 over all steps after warm-up
  float grad_clip = 0.0f;     // max global gradient norm, 0 = off
  int64_t eval_every = 5;     // epochs between validations
  int64_t eval_batch_size = 256;
  int64_t patience = 0;        // stop after this many validations without improvement; 0 = never
  std::string checkpoint_dir;  // empty: no checkpoints
  bool resume = false;         // continue from checkpoint_dir/last.ckpt when it exists
  uint64_t seed = 42;
  bool progress = true;  // progress bar on a terminal
};

struct TrainResult {
  RankingMetrics validation;  // best validation
  RankingMetrics test;        // test with the best parameters
  int64_t best_epoch = 0;
  int64_t epochs_run = 0;
  double seconds = 0;
};

class Trainer {
 public:
  Trainer(RetrievalModel& model, const SequenceDataset& dataset, const ItemVocabulary& vocabulary,
          TrainerConfig config);
  TrainResult fit();

  float learning_rate(int64_t step, int64_t total_steps) const;

 private:
  // Writes the model's host parameters (current after download()) and the trainer state.
  void save(const std::string& name, int64_t epoch, int64_t step, const TrainResult& result,
            int64_t stale) const;

  RetrievalModel& model_;
  const SequenceDataset& dataset_;
  const ItemVocabulary& vocabulary_;
  TrainerConfig config_;
};

}  // namespace genrec
