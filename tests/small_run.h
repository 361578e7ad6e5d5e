// The small synthetic training run the trainer tests share (600 users, 300 items, d 32,
// max_len 30): trains in seconds and beats popularity by a wide margin.
#pragma once

#include <cstdint>
#include <string>

#include "train/run_config.h"

namespace genrec::test {

inline RunConfig small_run(const std::string& out, int64_t epochs, const std::string& device) {
  RunConfig config;
  config.data.synthetic = true;
  config.data.synthetic_config.num_users = 600;
  config.data.synthetic_config.num_items = 300;
  config.data.synthetic_config.seed = 3;
  config.model.dim = config.model.dim_qk = config.model.dim_v = 32;
  config.model.max_len = 30;
  config.model.num_negatives = 64;
  config.model.dropout = 0.1f;
  config.train.epochs = epochs;
  config.train.eval_every = 2;
  config.train.batch_size = 64;
  config.train.progress = false;
  config.device = device;
  config.output_dir = config.train.checkpoint_dir = out;
  return config;
}

}  // namespace genrec::test
