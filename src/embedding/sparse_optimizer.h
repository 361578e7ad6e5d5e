// Sparse optimizer steps on a DynamicTable: a batch's row gradients are first summed per
// distinct id (in batch order, in float64, so the result does not depend on threads), then
// each touched row is updated once with its own optimizer state. Adam uses, by default, a
// per-row step count kept in the row's state (bias correction counts the updates of that row,
// not the global steps); AdamStepMode::kGlobal uses the caller's global step instead (lazy
// Adam). Rows not touched by a batch are not decayed or moved.
#pragma once

#include <cstdint>
#include <vector>

#include "embedding/dynamic_table.h"
#include "ops/adam.h"

namespace genrec {

enum class SparseOptimizerKind { kAdam, kAdagrad };
enum class AdamStepMode { kPerRow, kGlobal };

struct SparseOptimizerConfig {
  SparseOptimizerKind kind = SparseOptimizerKind::kAdam;
  cpu::AdamConfig adam;  // lr, betas, eps, weight decay of Adam
  AdamStepMode step_mode = AdamStepMode::kPerRow;
  float adagrad_lr = 0.01f;   // row-wise Adagrad:
  float adagrad_eps = 1e-8f;  //   acc += mean(g^2); w -= lr g / (sqrt(acc) + eps)
};

struct AggregatedGradients {
  std::vector<uint64_t> keys;   // distinct ids in order of first occurrence
  std::vector<float> grads;     // keys.size() x dim, sums of each id's rows
  std::vector<int64_t> counts;  // occurrences of each id
  int64_t size() const { return static_cast<int64_t>(keys.size()); }
};

// Sums the n x dim row gradients per distinct id (float64 accumulation in batch order).
AggregatedGradients aggregate_row_gradients(const uint64_t* ids, const float* grads, int64_t n,
                                            int64_t dim);

class SparseOptimizer {
 public:
  explicit SparseOptimizer(const SparseOptimizerConfig& config);

  // Aggregates the gradients, then updates the touched rows present in `table` (ids absent
  // from it are skipped); returns the number of rows updated. global_step (from 1) is used by
  // AdamStepMode::kGlobal only. Updated rows are stamped with the table's step.
  int64_t step(DynamicTable& table, const uint64_t* ids, const float* grads, int64_t n,
               int64_t global_step = 0) const;
  // The same on already aggregated gradients (distinct keys).
  int64_t apply(DynamicTable& table, const AggregatedGradients& aggregated,
                int64_t global_step = 0) const;

  const SparseOptimizerConfig& config() const { return config_; }
  void set_lr(float lr);  // Adam's or Adagrad's learning rate, for schedules

 private:
  SparseOptimizerConfig config_;
};

}  // namespace genrec
