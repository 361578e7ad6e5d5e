#include "model/item_embeddings.h"

#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/hash.h"
#include "embedding/sparse_optimizer.h"
#include "ops/embedding.h"

namespace genrec {
namespace {

// Keeps the table's Philox streams (seed', item id) apart from ParameterSet::initialize's
// (seed, parameter index): with the raw seed, item 1 would repeat parameter 1's draws.
constexpr uint64_t kItemSeedSalt = 0x6974656D5F726F77ull;  // "item_row"

class StaticItemEmbeddings final : public ItemEmbeddings {
 public:
  StaticItemEmbeddings(const RetrievalConfig& config, ParameterSet& params, int index)
      : params_(params), index_(index), rows_(config.num_items + 1), dim_(config.dim) {}

  void gather(const int64_t* ids, int64_t n, float* out, bool) override {
    cpu::embedding_gather(out, params_.value(index_), ids, n, dim_, rows_);
  }
  void scatter_add(const int64_t* ids, const float* grads, int64_t n) override {
    cpu::embedding_scatter_add(params_.grad(index_), grads, ids, n, dim_, rows_);
  }
  const float* all_rows() override { return params_.value(index_) + dim_; }  // 0 is padding

  // The rows are a parameter: the ParameterSet initializes, clips and steps them.
  void initialize(uint64_t) override {}
  void zero_grad() override {}
  double grad_squares() override { return 0.0; }
  void scale_grads(float) override {}
  void step(const cpu::AdamConfig&, float, int64_t) override {}
  DynamicTable* table() const override { return nullptr; }

 private:
  ParameterSet& params_;
  int index_;
  int64_t rows_, dim_;
};

class DynamicItemEmbeddings final : public ItemEmbeddings {
 public:
  explicit DynamicItemEmbeddings(const RetrievalConfig& config)
      : config_(config), num_items_(config.num_items), dim_(config.dim) {
    initialize(0);
  }

  void gather(const int64_t* ids, int64_t n, float* out, bool training) override {
    const auto* keys = reinterpret_cast<const uint64_t*>(ids);
    if (training) {
      table_->find_or_insert(keys, n, out);
      return;
    }
    found_.resize(n);
    table_->find(keys, n, out, found_.data());
    for (int64_t i = 0; i < n; ++i) {
      if (!found_[i]) table_->options().initializer.fill(keys[i], out + i * dim_, dim_);
    }
  }

  void scatter_add(const int64_t* ids, const float* grads, int64_t n) override {
    GENREC_CHECK(!aggregated_, "item gradients scattered after the step's norm or update");
    ids_.insert(ids_.end(), ids, ids + n);
    grads_.insert(grads_.end(), grads, grads + n * dim_);
  }

  const float* all_rows() override {
    std::vector<int64_t> items(num_items_);
    std::iota(items.begin(), items.end(), int64_t{1});
    rows_.resize(num_items_ * dim_);
    gather(items.data(), num_items_, rows_.data(), /*training=*/false);
    return rows_.data();
  }

  void initialize(uint64_t seed) override {
    table_ = std::make_unique<DynamicTable>(item_table_options(config_, seed));
    zero_grad();
  }

  void zero_grad() override {
    ids_.clear();
    grads_.clear();
    aggregated_ = false;
  }

  double grad_squares() override {
    double sum = 0.0;
    for (float g : gradients().grads) sum += static_cast<double>(g) * g;
    return sum;
  }

  void scale_grads(float scale) override {
    for (float& g : gradients().grads) g *= scale;
  }

  void step(const cpu::AdamConfig& adam, float lr, int64_t global_step) override {
    SparseOptimizerConfig config;
    config.adam = adam;
    config.adam.lr = lr;
    config.adam.weight_decay = 0.0f;  // as the static item_embedding, declared without decay
    // Per-row step counts: a row's moments only accumulate over the steps that touch it, so
    // bias correction must count those. With the global count, a row first touched late would
    // get m̂ = (1-β1) g and v̂ = (1-β2) g², a first step of 0.1/√0.02 ≈ 0.7 of Adam's.
    config.step_mode = AdamStepMode::kPerRow;
    table_->set_step(static_cast<uint64_t>(global_step));  // stamps the updated rows
    SparseOptimizer(config).apply(*table_, gradients(), global_step);
  }

  DynamicTable* table() const override { return table_.get(); }

 private:
  // The step's row gradients summed per distinct id, once all of them are scattered.
  AggregatedGradients& gradients() {
    if (!aggregated_) {
      aggregated_rows_ =
          aggregate_row_gradients(reinterpret_cast<const uint64_t*>(ids_.data()), grads_.data(),
                                  static_cast<int64_t>(ids_.size()), dim_);
      aggregated_ = true;
    }
    return aggregated_rows_;
  }

  RetrievalConfig config_;
  int64_t num_items_, dim_;
  std::unique_ptr<DynamicTable> table_;
  std::vector<int64_t> ids_;  // the step's per-token ids and gradients
  std::vector<float> grads_;
  AggregatedGradients aggregated_rows_;
  bool aggregated_ = false;
  std::vector<uint8_t> found_;
  std::vector<float> rows_;
};

}  // namespace

TableOptions item_table_options(const RetrievalConfig& config, uint64_t seed) {
  TableOptions options;
  options.dim = config.dim;
  options.optimizer = OptimizerState::kAdam;
  // Keyed by (seed, id): an item's first row does not depend on which batch inserts it.
  options.initializer = {InitKind::kNormal, kItemInitStd, mix64(seed ^ kItemSeedSalt)};
  // Checkpoints hold full dumps, so tombstones have no reader here; a log would keep 16 bytes
  // per removal (every row at each clear of a mirror table) for the whole run.
  options.log_removals = false;
  return options;
}

std::unique_ptr<ItemEmbeddings> make_item_embeddings(const RetrievalConfig& config,
                                                     ParameterSet& params, int item_param) {
  if (config.item_embeddings == ItemStore::kDynamic) {
    return std::make_unique<DynamicItemEmbeddings>(config);
  }
  return std::make_unique<StaticItemEmbeddings>(config, params, item_param);
}

}  // namespace genrec
