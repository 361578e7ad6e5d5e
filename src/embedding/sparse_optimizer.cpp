// Each touched row is updated by the dense cpu::adam_update over its dim floats (with the
// row's m and v), so a sparse step equals the dense step on the touched rows bit for bit.
#include "embedding/sparse_optimizer.h"

#include <cmath>
#include <unordered_map>

#include "core/error.h"

namespace genrec {

AggregatedGradients aggregate_row_gradients(const uint64_t* ids, const float* grads, int64_t n,
                                            int64_t dim) {
  GENREC_CHECK(n >= 0 && dim > 0, "sparse optimizer: bad gradient shape {} x {}", n, dim);
  AggregatedGradients out;
  std::unordered_map<uint64_t, int64_t> index;
  index.reserve(static_cast<size_t>(n));
  std::vector<int64_t> slot_of(n);
  for (int64_t i = 0; i < n; ++i) {
    auto [it, inserted] = index.try_emplace(ids[i], out.size());
    if (inserted) {
      out.keys.push_back(ids[i]);
      out.counts.push_back(0);
    }
    slot_of[i] = it->second;
    ++out.counts[it->second];
  }
  const int64_t m = out.size();
  std::vector<double> sums(static_cast<size_t>(m * dim), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    double* s = &sums[slot_of[i] * dim];
    const float* g = grads + i * dim;
    for (int64_t j = 0; j < dim; ++j) s[j] += g[j];
  }
  out.grads.assign(sums.begin(), sums.end());
  return out;
}

SparseOptimizer::SparseOptimizer(const SparseOptimizerConfig& config) : config_(config) {}

void SparseOptimizer::set_lr(float lr) {
  config_.adam.lr = lr;
  config_.adagrad_lr = lr;
}

int64_t SparseOptimizer::step(DynamicTable& table, const uint64_t* ids, const float* grads,
                              int64_t n, int64_t global_step) const {
  return apply(table, aggregate_row_gradients(ids, grads, n, table.dim()), global_step);
}

int64_t SparseOptimizer::apply(DynamicTable& table, const AggregatedGradients& agg,
                               int64_t global_step) const {
  const int64_t dim = table.dim();
  GENREC_CHECK(static_cast<int64_t>(agg.grads.size()) == agg.size() * dim,
               "sparse optimizer: {} keys need {} gradient values, got {}", agg.size(),
               agg.size() * dim, agg.grads.size());
  const OptimizerState state = table.options().optimizer;
  if (config_.kind == SparseOptimizerKind::kAdam) {
    GENREC_CHECK(state == OptimizerState::kAdam,
                 "sparse optimizer: Adam needs a table with Adam state, the table has {}",
                 optimizer_state_name(state));
    const bool per_row = config_.step_mode == AdamStepMode::kPerRow;
    GENREC_CHECK(per_row || global_step >= 1,
                 "sparse optimizer: global Adam steps count from 1, got {}", global_step);
    const cpu::AdamConfig adam = config_.adam;
    return table.update_rows(agg.keys.data(), agg.size(), [&](int64_t i, float* w, float* s) {
      float* m = s;
      float* v = s + dim;
      float& count = s[2 * dim];
      count += 1.0f;  // saturates at 2^24, where bias correction is 1 anyway
      const int64_t step = per_row ? static_cast<int64_t>(count) : global_step;
      cpu::adam_update(w, &agg.grads[i * dim], m, v, dim, adam, step);
    });
  }
  GENREC_CHECK(state == OptimizerState::kAdagrad,
               "sparse optimizer: row-wise Adagrad needs a table with Adagrad state, the table "
               "has {}",
               optimizer_state_name(state));
  const float lr = config_.adagrad_lr, eps = config_.adagrad_eps;
  return table.update_rows(agg.keys.data(), agg.size(), [&](int64_t i, float* w, float* s) {
    const float* g = &agg.grads[i * dim];
    double sq = 0.0;
    for (int64_t j = 0; j < dim; ++j) sq += static_cast<double>(g[j]) * g[j];
    s[0] += static_cast<float>(sq / static_cast<double>(dim));
    const float scale = lr / (std::sqrt(s[0]) + eps);
    for (int64_t j = 0; j < dim; ++j) w[j] -= scale * g[j];
  });
}

}  // namespace genrec
