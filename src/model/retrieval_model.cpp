// Every token of a training window is a prediction (next-item at all positions), and every
// row of the loss shares one pool of negatives so the logits are a single GEMM.
#include "model/retrieval_model.h"

#include <cmath>

#include "core/error.h"
#include "model/item_embeddings.h"
#include "model/retrieval_randomness.h"
#include "ops/elementwise.h"
#include "ops/gemm.h"
#include "ops/sampled_softmax.h"
#include "ops/topk.h"

namespace genrec {
namespace {

template <typename T>
T* grow(std::vector<T>& buffer, int64_t n) {
  if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(n);
  return buffer.data();
}

}  // namespace

std::string_view item_store_name(ItemStore store) {
  return store == ItemStore::kDynamic ? "dynamic" : "static";
}

ItemStore parse_item_store(const std::string& name) {
  if (name == "static") return ItemStore::kStatic;
  GENREC_CHECK(name == "dynamic", "unknown item embedding store '{}' (static or dynamic)", name);
  return ItemStore::kDynamic;
}

TokenBatch next_item_batch(const SequenceBatch& batch) {
  TokenBatch out;
  for (int64_t b = 0; b < batch.batch_size(); ++b) {
    int64_t begin = batch.offsets[b], end = batch.offsets[b + 1];
    for (int64_t t = begin; t + 1 < end; ++t) {
      out.items.push_back(batch.items[t]);
      out.timestamps.push_back(batch.timestamps[t]);
      out.targets.push_back(batch.items[t + 1]);
    }
    out.offsets.push_back(static_cast<int64_t>(out.items.size()));
  }
  return out;
}

TokenBatch history_batch(const SequenceBatch& batch, std::vector<int64_t>* last_items) {
  TokenBatch out;
  last_items->clear();
  for (int64_t b = 0; b < batch.batch_size(); ++b) {
    int64_t begin = batch.offsets[b], end = batch.offsets[b + 1];
    GENREC_CHECK(end - begin >= 2, "evaluation window of user {} has {} events; needs 2",
                 batch.users[b], end - begin);
    out.items.insert(out.items.end(), batch.items.begin() + begin, batch.items.begin() + end - 1);
    out.timestamps.insert(out.timestamps.end(), batch.timestamps.begin() + begin,
                          batch.timestamps.begin() + end - 1);
    out.offsets.push_back(static_cast<int64_t>(out.items.size()));
    last_items->push_back(batch.items[end - 1]);
  }
  return out;
}

RetrievalModel::RetrievalModel(const RetrievalConfig& config) : config_(config) {
  const int64_t D = config.dim;
  GENREC_CHECK(config.num_items > 0, "model needs num_items > 0");
  GENREC_CHECK(D > 0 && config.num_layers >= 0 && config.max_len > 0,
               "model needs dim > 0, num_layers >= 0, max_len > 0");
  GENREC_CHECK(config.num_negatives > 0 || config.in_batch_negatives,
               "the loss needs negatives: num_negatives > 0 or in_batch_negatives");
  GENREC_CHECK(config.temperature > 0.0f, "temperature must be positive");
  if (config.item_embeddings == ItemStore::kStatic) {
    item_table_ =
        params_.add("item_embedding", {config.num_items + 1, D}, Init::kNormal, kItemInitStd);
  }
  position_table_ = params_.add("position_embedding", {config.max_len, D}, Init::kNormal,
                                1.0f / std::sqrt(static_cast<float>(D)));
  block_config_ = HstuBlockConfig{D,
                                  config.num_heads,
                                  config.dim_qk,
                                  config.dim_v,
                                  config.dropout,
                                  config.position_bias ? config.max_len : 0,
                                  config.time_bias ? config.num_time_buckets : 0};
  for (int64_t l = 0; l < config.num_layers; ++l) {
    block_params_.push_back(
        declare_hstu_block(params_, "block" + std::to_string(l), block_config_));
  }
  params_.allocate();
}

void RetrievalModel::initialize(uint64_t seed) {
  seed_ = seed;
  params_.initialize(seed);
}

void RetrievalModel::validate(const TokenBatch& batch, bool training) const {
  const int64_t T = batch.num_tokens(), V = config_.num_items;
  GENREC_CHECK(!batch.offsets.empty() && batch.offsets.front() == 0 && batch.offsets.back() == T &&
                   static_cast<int64_t>(batch.timestamps.size()) == T,
               "batch columns disagree: {} offsets ending at {}, {} items, {} timestamps",
               batch.offsets.size(), batch.offsets.empty() ? 0 : batch.offsets.back(), T,
               batch.timestamps.size());
  for (int64_t b = 0; b < batch.batch_size(); ++b) {
    const int64_t length = batch.offsets[b + 1] - batch.offsets[b];
    GENREC_CHECK(length >= 0 && length <= config_.max_len,
                 "sequence {} has {} tokens; max_len is {}", b, length, config_.max_len);
  }
  for (int64_t item : batch.items) {
    GENREC_CHECK(item >= 1 && item <= V, "item {} outside 1..{}", item, V);
  }
  if (!training) return;
  GENREC_CHECK(static_cast<int64_t>(batch.targets.size()) == T, "training batch needs targets");
  for (int64_t target : batch.targets) {
    GENREC_CHECK(target >= 1 && target <= V, "target item {} outside 1..{}", target, V);
  }
}

CpuRetrievalModel::CpuRetrievalModel(const RetrievalConfig& config)
    : RetrievalModel(config), item_rows_(make_item_embeddings(config_, params_, item_table_)) {
  for (size_t l = 0; l < block_params_.size(); ++l) {
    blocks_.push_back(std::make_unique<HstuBlock>(block_config_, params_, block_params_[l],
                                                  static_cast<uint64_t>(l)));
  }
}

CpuRetrievalModel::~CpuRetrievalModel() = default;

void CpuRetrievalModel::initialize(uint64_t seed) {
  RetrievalModel::initialize(seed);
  item_rows_->initialize(seed);
}

DynamicTable* CpuRetrievalModel::item_table() const {
  return item_rows_->table();
}

void CpuRetrievalModel::zero_grad() {
  params_.zero_grad();
  item_rows_->zero_grad();
}

void CpuRetrievalModel::encode(const TokenBatch& batch, bool training, uint64_t seed,
                               int64_t step) {
  const int64_t T = batch.num_tokens(), D = config_.dim, B = batch.batch_size();
  int64_t* positions = grow(positions_, T);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = batch.offsets[b]; t < batch.offsets[b + 1]; ++t) {
      positions[t] = t - batch.offsets[b];
    }
  }
  layers_.resize(blocks_.size() + 1);
  for (auto& layer : layers_) grow(layer, T * D);
  float* x0 = layers_[0].data();
  item_rows_->gather(batch.items.data(), T, x0, training);
  const float scale = std::sqrt(static_cast<float>(D));
  const float* pos = params_.value(position_table_);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t c = 0; c < D; ++c)
      x0[t * D + c] = x0[t * D + c] * scale + pos[positions[t] * D + c];
  }
  ctx_ = HstuBatchContext{batch.offsets.data(),
                          B,
                          T,
                          batch.timestamps.data(),
                          1.0f / static_cast<float>(config_.max_len),
                          training,
                          step_key(seed, step)};
  if (training && config_.dropout > 0.0f) {
    cpu::dropout_forward(x0, x0, T * D, config_.dropout, ctx_.dropout_seed, kInputDropoutStream);
  }
  for (size_t l = 0; l < blocks_.size(); ++l) {
    blocks_[l]->forward(layers_[l + 1].data(), layers_[l].data(), ctx_);
  }
  cpu::l2_normalize_forward(grow(user_, T * D), grow(inv_norm_user_, T), layers_.back().data(), T,
                            D, kEmbeddingNormEps);
}

float CpuRetrievalModel::train_step(const TokenBatch& batch, uint64_t seed, int64_t step) {
  const int64_t T = batch.num_tokens(), D = config_.dim;
  validate(batch, /*training=*/true);
  if (T == 0) return 0.0f;
  encode(batch, /*training=*/true, seed, step);

  negatives_ = sample_negatives(config_, batch, ctx_.dropout_seed);
  const int64_t K = static_cast<int64_t>(negatives_.size());
  const int64_t* negatives = negatives_.data();

  item_rows_->gather(batch.targets.data(), T, grow(pos_raw_, T * D), /*training=*/true);
  cpu::l2_normalize_forward(grow(pos_, T * D), grow(inv_norm_pos_, T), pos_raw_.data(), T, D,
                            kEmbeddingNormEps);
  item_rows_->gather(negatives, K, grow(neg_raw_, K * D), /*training=*/true);
  cpu::l2_normalize_forward(grow(neg_, K * D), grow(inv_norm_neg_, K), neg_raw_.data(), K, D,
                            kEmbeddingNormEps);
  float loss = cpu::sampled_softmax_forward(grow(probs_, T * (K + 1)), user_.data(), pos_.data(),
                                            batch.targets.data(), neg_.data(), negatives, T, K, D,
                                            config_.temperature);

  // Backward: loss → normalised embeddings → raw embeddings and encoder output.
  float* d_user = grow(d_user_, T * D);
  float* d_pos = grow(d_pos_, T * D);
  float* d_neg = grow(d_neg_, K * D);
  cpu::sampled_softmax_backward(d_user, d_pos, d_neg, probs_.data(), user_.data(), pos_.data(),
                                neg_.data(), T, K, D, config_.temperature);
  float* d_raw = grow(d_raw_, std::max(T, K) * D);
  cpu::l2_normalize_backward(d_raw, d_pos, pos_.data(), inv_norm_pos_.data(), T, D);
  item_rows_->scatter_add(batch.targets.data(), d_raw, T);
  cpu::l2_normalize_backward(d_raw, d_neg, neg_.data(), inv_norm_neg_.data(), K, D);
  item_rows_->scatter_add(negatives, d_raw, K);

  float* d_a = grow(d_a_, T * D);
  float* d_b = grow(d_b_, T * D);
  cpu::l2_normalize_backward(d_a, d_user, user_.data(), inv_norm_user_.data(), T, D);
  for (int64_t l = static_cast<int64_t>(blocks_.size()) - 1; l >= 0; --l) {
    blocks_[l]->backward(d_b, d_a, layers_[l].data(), ctx_);
    std::swap(d_a, d_b);
  }
  if (config_.dropout > 0.0f) {
    cpu::dropout_backward(d_a, d_a, T * D, config_.dropout, ctx_.dropout_seed, kInputDropoutStream);
  }
  float* d_pos_table = params_.grad(position_table_);
  const float scale = std::sqrt(static_cast<float>(D));
  for (int64_t t = 0; t < T; ++t) {
    float* row = d_pos_table + positions_[t] * D;
    for (int64_t c = 0; c < D; ++c) row[c] += d_a[t * D + c];
  }
  for (int64_t i = 0; i < T * D; ++i) d_a[i] *= scale;
  item_rows_->scatter_add(batch.items.data(), d_a, T);
  return loss;
}

void CpuRetrievalModel::encode_users(const TokenBatch& batch, float* out) {
  const int64_t D = config_.dim;
  validate(batch, /*training=*/false);
  for (int64_t b = 0; b < batch.batch_size(); ++b) {
    GENREC_CHECK(batch.offsets[b + 1] > batch.offsets[b], "user {} of the batch has no history", b);
  }
  encode(batch, /*training=*/false, 0, 0);
  for (int64_t b = 0; b < batch.batch_size(); ++b) {
    const float* row = user_.data() + (batch.offsets[b + 1] - 1) * D;
    std::copy(row, row + D, out + b * D);
  }
}

void CpuRetrievalModel::optimizer_step(const cpu::AdamConfig& adam, float lr, float grad_clip) {
  // One global norm over the dense gradients and the item rows' (a dynamic table's are
  // outside params_).
  const float norm =
      static_cast<float>(std::sqrt(params_.grad_squares() + item_rows_->grad_squares()));
  if (grad_clip > 0.0f && norm > grad_clip) {
    params_.scale_grads(grad_clip / norm);
    item_rows_->scale_grads(grad_clip / norm);
  }
  params_.adam_step(adam, lr);
  item_rows_->step(adam, lr, params_.adam_steps());
}

void CpuRetrievalModel::rank_targets(const TokenBatch& history, const int64_t* targets,
                                     int64_t* ranks) {
  const int64_t B = history.batch_size(), V = config_.num_items, D = config_.dim;
  item_embeddings(items_);
  float* users = grow(queries_, B * D);
  encode_users(history, users);
  float* scores = grow(scores_, B * V);
  cpu::gemm(false, true, B, V, D, 1.0f, users, D, items_.data(), D, 0.0f, scores, V);
  std::vector<int64_t> columns(targets, targets + B);
  for (int64_t& c : columns) c -= 1;  // item i is column i - 1
  cpu::rank_of_target(ranks, scores, columns.data(), B, V);
}

void CpuRetrievalModel::item_embeddings(std::vector<float>& out) {
  const int64_t V = config_.num_items, D = config_.dim;
  out.resize(V * D);
  std::vector<float> inv_norm(V);
  cpu::l2_normalize_forward(out.data(), inv_norm.data(), item_rows_->all_rows(), V, D,
                            kEmbeddingNormEps);
}

std::unique_ptr<RetrievalModel> make_retrieval_model(const RetrievalConfig& config, Device device) {
  if (device == Device::kCUDA) return make_cuda_retrieval_model(config);
  return std::make_unique<CpuRetrievalModel>(config);
}

#ifndef GENREC_WITH_CUDA
std::unique_ptr<RetrievalModel> make_cuda_retrieval_model(const RetrievalConfig&) {
  fail("genrec was built without CUDA; use --device cpu");
}
#endif

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::kCPU;
  if (name == "cuda") {
    GENREC_CHECK(cuda_available(), "--device cuda: no CUDA device is available{}",
#ifdef GENREC_WITH_CUDA
                 ""
#else
                 " (genrec was built without CUDA)"
#endif
    );
    return Device::kCUDA;
  }
  GENREC_CHECK(name == "auto", "unknown device '{}' (cpu, cuda or auto)", name);
  return cuda_available() ? Device::kCUDA : Device::kCPU;
}

}  // namespace genrec
