// RetrievalModel: next-item prediction with an HSTU encoder over item-id sequences.
//   x0 = Dropout(E[item] * sqrt(D) + P[position]);  h = HSTU_L(...HSTU_1(x0));  u = h / |h|
//   loss at every position t: sampled softmax of u_t against E[item_{t+1}]/|.| (positive) and
//   a pool of negatives shared by the batch, temperature τ (the public HSTU recipe).
// Scores for ranking are cosine similarities u · E[i]/|E[i]|.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"
#include "data/batcher.h"
#include "model/hstu_block.h"
#include "model/parameters.h"
#include "ops/adam.h"

namespace genrec {

class DynamicTable;
class ItemEmbeddings;

// Where the item rows live: the dense parameter item_embedding {V + 1, D}, or a DynamicTable
// keyed by item id whose rows only exist once an item is looked up in training.
enum class ItemStore { kStatic, kDynamic };
std::string_view item_store_name(ItemStore store);
ItemStore parse_item_store(const std::string& name);  // "static" or "dynamic"; throws otherwise

struct RetrievalConfig {
  int64_t num_items = 0;  // V: item indices 1..V, row 0 is padding
  int64_t dim = 64;
  int64_t num_layers = 2;
  int64_t num_heads = 1;
  int64_t dim_qk = 64;  // per head
  int64_t dim_v = 64;   // per head
  float dropout = 0.2f;
  int64_t max_len = 200;      // longest history read; also N of the 1/N normalisation
  bool position_bias = true;  // relative attention bias by position
  bool time_bias = false;     // relative attention bias by log time bucket
  int64_t num_time_buckets = 128;
  int64_t num_negatives = 128;      // uniform negatives per batch
  bool in_batch_negatives = false;  // also use the batch's target items as negatives
  float temperature = 0.05f;
  ItemStore item_embeddings = ItemStore::kStatic;
};

// Floor of the L2 norms of user and item embeddings (avoids 0/0 for an all-zero row).
constexpr float kEmbeddingNormEps = 1e-6f;

// Inputs of one forward pass: a jagged batch of item indices.
struct TokenBatch {
  std::vector<int64_t> offsets{0};  // [B + 1]
  std::vector<int64_t> items;       // [T] in 1..V
  std::vector<int64_t> timestamps;  // [T]
  std::vector<int64_t> targets;     // [T] next item (1..V) or 0 for none; training only
  int64_t batch_size() const { return static_cast<int64_t>(offsets.size()) - 1; }
  int64_t num_tokens() const { return static_cast<int64_t>(items.size()); }
};

// Training: each window predicts its tokens 1..L-1 from tokens 0..L-2.
TokenBatch next_item_batch(const SequenceBatch& batch);
// Evaluation: all but each window's last token are the history; the last is the target.
TokenBatch history_batch(const SequenceBatch& batch, std::vector<int64_t>* last_items);

// The model's interface, whatever the device. params() is the host copy of every parameter,
// gradient and Adam moment: authoritative on the CPU backend, brought up to date by download()
// on a device backend (upload() pushes values and moments back). The parameter layout is the same
// on every backend, so checkpoints move between them.
class RetrievalModel {
 public:
  virtual ~RetrievalModel() = default;

  const RetrievalConfig& config() const { return config_; }
  ParameterSet& params() { return params_; }
  const ParameterSet& params() const { return params_; }
  virtual Device device() const = 0;

  // Fills the parameters from `seed`; a dynamic item table restarts empty and draws each new
  // row from it. seed() is kept in checkpoints, so unseen items get the same rows after a load.
  virtual void initialize(uint64_t seed);
  uint64_t seed() const { return seed_; }
  // The dynamic item table, or null when the item rows are the parameter item_embedding. On a
  // device backend: the host copy, which download() and upload() sync like params().
  virtual DynamicTable* item_table() const { return nullptr; }

  virtual void zero_grad() = 0;
  // Forward and backward of the mean sampled-softmax loss over all targets of the batch;
  // gradients accumulate. `seed` and `step` fix dropout and negative sampling.
  virtual float train_step(const TokenBatch& batch, uint64_t seed, int64_t step) = 0;
  // Clips the global gradient norm (0 = off), then one Adam/AdamW step at rate `lr`. The norm
  // and the step include the rows of a dynamic item table.
  virtual void optimizer_step(const cpu::AdamConfig& adam, float lr, float grad_clip) = 0;

  // L2-normalised user embeddings [B, D] (host) at each sequence's last token (eval mode).
  virtual void encode_users(const TokenBatch& batch, float* out) = 0;
  // For each sequence: how many items score strictly higher than its target (item 1..V).
  virtual void rank_targets(const TokenBatch& history, const int64_t* targets, int64_t* ranks) = 0;
  // L2-normalised item embeddings [V, D] (host) for items 1..V (row i-1 is item i).
  virtual void item_embeddings(std::vector<float>& out) = 0;

  virtual void download() {}
  virtual void upload() {}
  // Returns when all queued device work has finished.
  virtual void synchronize() {}

  // Throws unless the batch fits the model: sequences of at most max_len tokens, items (and,
  // when training, one target per token) in 1..V.
  void validate(const TokenBatch& batch, bool training) const;

 protected:
  explicit RetrievalModel(const RetrievalConfig& config);

  RetrievalConfig config_;
  HstuBlockConfig block_config_;
  ParameterSet params_;
  uint64_t seed_ = 0;
  int item_table_ = -1;  // the parameter item_embedding; -1 with a dynamic item table
  int position_table_;
  std::vector<HstuBlockParams> block_params_;
};

// The fp32 CPU implementation: the reference every other backend is tested against.
class CpuRetrievalModel : public RetrievalModel {
 public:
  explicit CpuRetrievalModel(const RetrievalConfig& config);

  ~CpuRetrievalModel() override;

  Device device() const override { return Device::kCPU; }
  void initialize(uint64_t seed) override;
  DynamicTable* item_table() const override;
  void zero_grad() override;
  float train_step(const TokenBatch& batch, uint64_t seed, int64_t step) override;
  void optimizer_step(const cpu::AdamConfig& adam, float lr, float grad_clip) override;
  void encode_users(const TokenBatch& batch, float* out) override;
  void rank_targets(const TokenBatch& history, const int64_t* targets, int64_t* ranks) override;
  void item_embeddings(std::vector<float>& out) override;

 private:
  void encode(const TokenBatch& batch, bool training, uint64_t seed, int64_t step);

  std::unique_ptr<ItemEmbeddings> item_rows_;
  std::vector<std::unique_ptr<HstuBlock>> blocks_;
  HstuBatchContext ctx_;
  // Activations: residual stream per layer boundary, and the loss inputs.
  std::vector<std::vector<float>> layers_;
  std::vector<float> user_, inv_norm_user_, pos_raw_, pos_, inv_norm_pos_, neg_raw_, neg_,
      inv_norm_neg_, probs_, items_, queries_, scores_;
  std::vector<int64_t> positions_, negatives_;
  // Backward scratch.
  std::vector<float> d_user_, d_pos_, d_neg_, d_a_, d_b_, d_raw_;
};

// The backend for `device`: the CPU model, or the CUDA one when built with CUDA (either item
// store on either).
std::unique_ptr<RetrievalModel> make_retrieval_model(const RetrievalConfig& config, Device device);
std::unique_ptr<RetrievalModel> make_cuda_retrieval_model(const RetrievalConfig& config);

// "cpu", "cuda", or "auto" (CUDA when a device is present) → a device.
Device parse_device(const std::string& name);

}  // namespace genrec
