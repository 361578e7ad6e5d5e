// RetrievalModel: next-item prediction with an HSTU encoder over item-id sequences.
//   x0 = Dropout(E[item] * sqrt(D) + P[position]);  h = HSTU_L(...HSTU_1(x0));  u = h / |h|
//   loss at every position t: sampled softmax of u_t against E[item_{t+1}]/|.| (positive) and
//   a pool of negatives shared by the batch, temperature τ (the public HSTU recipe).
// Scores for ranking are cosine similarities u · E[i]/|E[i]|.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "data/batcher.h"
#include "model/hstu_block.h"
#include "model/parameters.h"

namespace genrec {

struct RetrievalConfig {
  int64_t num_items = 0;  // V: item indices 1..V, row 0 is padding
  int64_t dim = 64;
  int64_t num_layers = 2;
  int64_t num_heads = 1;
  int64_t dim_qk = 64;  // per head
  int64_t dim_v = 64;   // per head
  float dropout = 0.2f;
  int64_t max_len = 200;           // longest history read; also N of the 1/N normalisation
  bool position_bias = true;       // relative attention bias by position
  bool time_bias = false;          // relative attention bias by log time bucket
  int64_t num_time_buckets = 128;
  int64_t num_negatives = 128;     // uniform negatives per batch
  bool in_batch_negatives = false;  // also use the batch's target items as negatives
  float temperature = 0.05f;
};

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

class RetrievalModel {
 public:
  explicit RetrievalModel(const RetrievalConfig& config);

  const RetrievalConfig& config() const { return config_; }
  ParameterSet& params() { return params_; }
  const ParameterSet& params() const { return params_; }

  // Forward and backward of the mean sampled-softmax loss over all targets of the batch;
  // gradients accumulate into params(). `step` seeds dropout and negative sampling.
  float train_step(const TokenBatch& batch, uint64_t seed, int64_t step);

  // L2-normalised user embeddings [B, D] read at each sequence's last token (eval mode).
  // Sequences must be non-empty.
  void encode_users(const TokenBatch& batch, float* out);

  // L2-normalised item embeddings [V, D] for items 1..V (row i-1 is item i).
  void item_embeddings(std::vector<float>& out) const;

 private:
  void encode(const TokenBatch& batch, bool training, uint64_t seed, int64_t step);

  RetrievalConfig config_;
  ParameterSet params_;
  int item_table_, position_table_;
  std::vector<std::unique_ptr<HstuBlock>> blocks_;
  HstuBatchContext ctx_;
  // Activations: residual stream per layer boundary, and the loss inputs.
  std::vector<std::vector<float>> layers_;
  std::vector<float> user_, inv_norm_user_, pos_raw_, pos_, inv_norm_pos_, neg_raw_, neg_,
      inv_norm_neg_, probs_;
  std::vector<int64_t> positions_, rows_, row_targets_, negatives_;
  // Backward scratch.
  std::vector<float> d_user_, d_pos_, d_neg_, d_a_, d_b_, d_raw_;
};

}  // namespace genrec
