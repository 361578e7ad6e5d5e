#include "train/pipeline.h"

#include <filesystem>

#include "core/logging.h"
#include "data/converters.h"
#include "data/synthetic.h"
#include "model/checkpoint.h"

namespace genrec {

SequenceDataset load_dataset(const DataConfig& config) {
  SequenceDataset dataset =
      config.synthetic ? generate_synthetic(config.synthetic_config) : read_any(config.path);
  dataset.validate();
  return dataset;
}

TrainingRun run_training(const RunConfig& config) {
  TrainingRun run;
  run.dataset = load_dataset(config.data);
  run.vocabulary = ItemVocabulary::build(run.dataset);
  log_info("data: {} users, {} items, {} events", run.dataset.num_users(), run.vocabulary.size(),
           run.dataset.num_events());
  RetrievalConfig model_config = config.model;
  model_config.num_items = run.vocabulary.size();
  const Device device = parse_device(config.device);
  run.model = make_retrieval_model(model_config, device);
  run.model->initialize(config.train.seed);
  run.model->upload();
  log_info("model: {} layers, dim {}, {} heads, {} parameters, {} item table, on {}",
           model_config.num_layers, model_config.dim, model_config.num_heads,
           run.model->params().numel(), item_store_name(model_config.item_embeddings),
           device_name(device));

  Trainer trainer(*run.model, run.dataset, run.vocabulary, config.train);
  run.result = trainer.fit();
  const int64_t max_len = model_config.max_len;
  run.popularity = evaluate_popularity(run.dataset, run.vocabulary,
                                       leave_one_out_windows(run.dataset, Split::kTrain, max_len),
                                       leave_one_out_windows(run.dataset, Split::kTest, max_len));
  if (!config.output_dir.empty()) {
    std::filesystem::create_directories(config.output_dir);
    auto path = std::filesystem::path(config.output_dir) / "model.ckpt";
    run.model->download();
    save_checkpoint(path.string(), *run.model, run.vocabulary,
                    {{"best_epoch", run.result.best_epoch}});
    log_info("saved the best model to {}", path.string());
  }
  return run;
}

}  // namespace genrec
