// Sparse optimizer: per-id aggregation, then Adam / row-wise Adagrad on the touched rows only,
// against float64 references and the dense cpu::adam_update.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <vector>

#include "core/error.h"
#include "core/philox.h"
#include "embedding/sparse_optimizer.h"

namespace genrec {
namespace {

constexpr int64_t kDim = 16;

TEST(EmbeddingOptimizer, AggregatesDuplicateIdsInOrder) {
  std::vector<uint64_t> ids = {4, 9, 4, 4};
  std::vector<float> g = {1, 2, 10, 20, 100, 200, 1000, 2000};
  AggregatedGradients a = aggregate_row_gradients(ids.data(), g.data(), 4, 2);
  EXPECT_EQ(a.keys, std::vector<uint64_t>({4, 9}));
  EXPECT_EQ(a.counts, std::vector<int64_t>({3, 1}));
  EXPECT_EQ(a.grads, std::vector<float>({1101, 2202, 10, 20}));
}

struct RefRow {
  std::vector<double> w, m, v;
  int64_t steps = 0;
};

void check_adam(AdamStepMode mode, bool decoupled) {
  SCOPED_TRACE(testing::Message() << "per_row=" << (mode == AdamStepMode::kPerRow)
                                  << " decoupled=" << decoupled);
  TableOptions opt;
  opt.dim = kDim;
  opt.optimizer = OptimizerState::kAdam;
  opt.initializer = {InitKind::kNormal, 1.0f, 11};
  DynamicTable table(opt);
  SparseOptimizerConfig cfg;
  cfg.adam.lr = 1e-2f;
  cfg.adam.weight_decay = 0.1f;
  cfg.adam.decoupled = decoupled;
  cfg.step_mode = mode;
  SparseOptimizer sparse(cfg);
  // All 40 ids exist; each step touches a random subset with duplicates.
  std::vector<uint64_t> all(40);
  for (int i = 0; i < 40; ++i) all[i] = 7 * i + 1;
  std::vector<float> init(40 * kDim);
  table.find_or_insert(all.data(), 40, init.data());
  std::map<uint64_t, RefRow> ref;
  // The dense twin: the same rows updated with cpu::adam_update on the aggregated gradients.
  std::map<uint64_t, std::vector<float>> dense_w, dense_m, dense_v;
  for (int i = 0; i < 40; ++i) {
    ref[all[i]].w.assign(&init[i * kDim], &init[i * kDim] + kDim);
    ref[all[i]].m.assign(kDim, 0.0);
    ref[all[i]].v.assign(kDim, 0.0);
    dense_w[all[i]].assign(&init[i * kDim], &init[i * kDim] + kDim);
    dense_m[all[i]].assign(kDim, 0.0f);
    dense_v[all[i]].assign(kDim, 0.0f);
  }
  Philox rng(5);
  for (int64_t step = 1; step <= 8; ++step) {
    const int64_t n = 30;
    std::vector<uint64_t> ids(n);
    for (auto& id : ids) id = all[rng.below(20)];  // ids 20..39 are never touched
    std::vector<float> g(n * kDim);
    for (auto& x : g) x = rng.normal();
    table.set_step(100 + step);
    const int64_t updated = sparse.step(table, ids.data(), g.data(), n, step);
    AggregatedGradients agg = aggregate_row_gradients(ids.data(), g.data(), n, kDim);
    EXPECT_EQ(updated, agg.size());
    const double b1 = cfg.adam.beta1, b2 = cfg.adam.beta2, lr = cfg.adam.lr,
                 wd = cfg.adam.weight_decay;
    for (int64_t u = 0; u < agg.size(); ++u) {
      RefRow& r = ref[agg.keys[u]];
      const int64_t t = mode == AdamStepMode::kPerRow ? ++r.steps : step;
      for (int64_t j = 0; j < kDim; ++j) {
        double gj = 0.0;  // float64 aggregation from the raw gradients
        for (int64_t i = 0; i < n; ++i) {
          if (ids[i] == agg.keys[u]) gj += g[i * kDim + j];
        }
        if (!decoupled) gj += wd * r.w[j];
        r.m[j] = b1 * r.m[j] + (1 - b1) * gj;
        r.v[j] = b2 * r.v[j] + (1 - b2) * gj * gj;
        const double mh = r.m[j] / (1 - std::pow(b1, t)), vh = r.v[j] / (1 - std::pow(b2, t));
        if (decoupled) r.w[j] -= lr * wd * r.w[j];
        r.w[j] -= lr * mh / (std::sqrt(vh) + cfg.adam.eps);
      }
      cpu::adam_update(dense_w[agg.keys[u]].data(), &agg.grads[u * kDim],
                       dense_m[agg.keys[u]].data(), dense_v[agg.keys[u]].data(), kDim, cfg.adam, t);
    }
  }
  TableRows rows = table.export_rows();
  const int64_t sd = table.state_dim();
  double err = 0.0, norm = 0.0;
  for (int64_t i = 0; i < rows.size(); ++i) {
    const uint64_t k = rows.keys[i];
    const RefRow& r = ref[k];
    const float* w = &rows.values[i * kDim];
    const float* m = &rows.states[i * sd];
    EXPECT_EQ(0, std::memcmp(w, dense_w[k].data(), 4 * kDim)) << "dense adam, key " << k;
    EXPECT_EQ(0, std::memcmp(m, dense_m[k].data(), 4 * kDim)) << "dense adam m, key " << k;
    for (int64_t j = 0; j < kDim; ++j) {
      err += (w[j] - r.w[j]) * (w[j] - r.w[j]) + (m[j] - r.m[j]) * (m[j] - r.m[j]);
      norm += r.w[j] * r.w[j] + r.m[j] * r.m[j];
    }
    if (r.steps == 0 && mode == AdamStepMode::kPerRow) {
      EXPECT_EQ(0, std::memcmp(w, &init[(k - 1) / 7 * kDim], 4 * kDim))
          << "untouched row " << k << " changed";
      EXPECT_EQ(rows.stamps[i], 0u);
    }
    if (mode == AdamStepMode::kPerRow) {
      EXPECT_EQ(m[2 * kDim], float(r.steps));
    }
  }
  EXPECT_LT(std::sqrt(err / norm), 1e-5);
}

TEST(EmbeddingOptimizer, AdamPerRowStepMatchesReference) {
  check_adam(AdamStepMode::kPerRow, true);
  check_adam(AdamStepMode::kPerRow, false);
}

TEST(EmbeddingOptimizer, AdamGlobalStepMatchesReference) {
  check_adam(AdamStepMode::kGlobal, true);
}

TEST(EmbeddingOptimizer, RowwiseAdagradMatchesReference) {
  TableOptions opt;
  opt.dim = kDim;
  opt.optimizer = OptimizerState::kAdagrad;
  opt.initial_state = 0.1f;
  opt.initializer = {InitKind::kUniform, 0.5f, 2};
  DynamicTable table(opt);
  SparseOptimizerConfig cfg;
  cfg.kind = SparseOptimizerKind::kAdagrad;
  cfg.adagrad_lr = 0.05f;
  SparseOptimizer sparse(cfg);
  std::vector<uint64_t> ids = {3, 8, 3, 100};  // 100 is absent: skipped
  std::vector<float> w0(2 * kDim);
  std::vector<uint64_t> present = {3, 8};
  table.find_or_insert(present.data(), 2, w0.data());
  Philox rng(3);
  std::vector<double> w(w0.begin(), w0.end()), acc = {0.1, 0.1};
  for (int step = 0; step < 5; ++step) {
    std::vector<float> g(4 * kDim);
    for (auto& x : g) x = rng.normal();
    EXPECT_EQ(sparse.step(table, ids.data(), g.data(), 4), 2);
    for (int r = 0; r < 2; ++r) {
      std::vector<double> gs(kDim, 0.0);
      for (int i = 0; i < 3; ++i) {
        if (ids[i] != present[r]) continue;
        for (int j = 0; j < kDim; ++j) gs[j] += g[i * kDim + j];
      }
      double sq = 0;
      for (double x : gs) sq += x * x;
      acc[r] += sq / kDim;
      for (int j = 0; j < kDim; ++j) w[r * kDim + j] -= 0.05 * gs[j] / (std::sqrt(acc[r]) + 1e-8);
    }
  }
  EXPECT_FALSE(table.contains(100));
  TableRows rows = table.export_rows();
  double err = 0, norm = 0;
  for (int64_t i = 0; i < 2 * kDim; ++i) {
    err += (rows.values[i] - w[i]) * (rows.values[i] - w[i]);
    norm += w[i] * w[i];
  }
  EXPECT_LT(std::sqrt(err / norm), 1e-5);
  EXPECT_NEAR(rows.states[0], acc[0], 1e-5 * acc[0]);
  EXPECT_NEAR(rows.states[1], acc[1], 1e-5 * acc[1]);
  // A table without the optimizer's state is refused.
  TableOptions none;
  none.dim = kDim;
  DynamicTable plain(none);
  std::vector<float> g(4 * kDim);
  EXPECT_THROW(sparse.step(plain, ids.data(), g.data(), 4), Error);
}

}  // namespace
}  // namespace genrec
