// RunConfig: the YAML file `genrec train --config` reads. Sections `data`, `model`, `train`
// map onto the library's config structs; unknown keys and wrong types are errors that name
// the file, line and key, so a typo never silently falls back to a default.
#pragma once

#include <string>
#include <vector>

#include "data/synthetic.h"
#include "model/retrieval_model.h"
#include "train/trainer.h"

namespace genrec {

struct DataConfig {
  std::string path;        // a shard or any format read_any() understands
  bool synthetic = false;  // generate instead of reading `path`
  SyntheticConfig synthetic_config;
};

struct RunConfig {
  DataConfig data;
  RetrievalConfig model;  // num_items is filled from the data
  TrainerConfig train;
  std::string output_dir = "runs/latest";  // checkpoints and the final model
  std::string device = "auto";             // cpu, cuda, or auto (CUDA when present)
};

// overrides: "section.key=value" entries applied on top of the file (e.g. from --set).
RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides = {});
RunConfig parse_run_config(const std::string& yaml_text, const std::string& source_name,
                           const std::vector<std::string>& overrides = {});

}  // namespace genrec
