// Checkpoints: one file holding the model configuration, the item vocabulary, parameters,
// Adam moments, a dynamic item table and the trainer's state, so training resumes exactly and
// serving needs nothing else. Layout (little-endian):
//   "GRCKPT01" | u64 meta_bytes | meta JSON | f32 values[n] | f32 adam_m[n] | f32 adam_v[n]
//   | i64 vocabulary[V] | item table dump (meta item_table_bytes; 0 for a static table)
//   | u64 xxh64 of everything before it
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "data/sequence_dataset.h"
#include "model/retrieval_model.h"

namespace genrec {

nlohmann::json to_json(const RetrievalConfig& config);
RetrievalConfig retrieval_config_from_json(const nlohmann::json& json);

// Writes atomically (temporary file, then rename). `state` is the trainer's own JSON. Saves
// model.params(): a device model must download() first.
void save_checkpoint(const std::string& path, const RetrievalModel& model,
                     const ItemVocabulary& vocabulary, const nlohmann::json& state);

struct LoadedCheckpoint {
  std::unique_ptr<RetrievalModel> model;
  ItemVocabulary vocabulary;
  nlohmann::json state;
};

// Verifies magic, checksum and parameter layout; errors name the file and the mismatch.
// The model is built for `device` and its parameters uploaded there.
LoadedCheckpoint load_checkpoint(const std::string& path, Device device = Device::kCPU);

}  // namespace genrec
