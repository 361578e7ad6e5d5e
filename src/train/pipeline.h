// The end-to-end training job behind `genrec train` and `genrec demo`: load or generate the
// data, build the vocabulary and model, train, and score the test split against the
// most-popular baseline.
#pragma once

#include <memory>

#include "data/sequence_dataset.h"
#include "model/retrieval_model.h"
#include "train/evaluator.h"
#include "train/run_config.h"
#include "train/trainer.h"

namespace genrec {

struct TrainingRun {
  SequenceDataset dataset;
  ItemVocabulary vocabulary;
  std::unique_ptr<RetrievalModel> model;
  TrainResult result;
  RankingMetrics popularity;  // most-popular baseline on the test split
};

SequenceDataset load_dataset(const DataConfig& config);
TrainingRun run_training(const RunConfig& config);

}  // namespace genrec
