// ItemEmbeddings: the item rows E[1..V] of the CPU retrieval model behind one interface, so the
// model gathers rows and scatters their gradients without knowing where they live.
//   static:  the parameter item_embedding {V + 1, D} of the model's ParameterSet, whose
//            initialize, zero_grad, global norm and dense Adam already cover the rows.
//   dynamic: a DynamicTable keyed by item id with Adam state in its rows. Training lookups
//            insert new ids; a step's per-token gradients are summed per distinct id and
//            SparseOptimizer updates only the rows the step touched.
#pragma once

#include <cstdint>
#include <memory>

#include "embedding/dynamic_table.h"
#include "model/parameters.h"
#include "model/retrieval_model.h"
#include "ops/adam.h"

namespace genrec {

// Standard deviation of the normal initial item rows, static or dynamic.
constexpr float kItemInitStd = 0.02f;

class ItemEmbeddings {
 public:
  virtual ~ItemEmbeddings() = default;

  // Rows of `ids` (1..V) into out [n, D]. training: a dynamic table inserts the ids it lacks;
  // otherwise an absent id reads its initial row and nothing is inserted.
  virtual void gather(const int64_t* ids, int64_t n, float* out, bool training) = 0;
  // Adds the row gradients grads [n, D] to the rows of `ids`; every call of a step comes
  // before that step's grad_squares, scale_grads and step.
  virtual void scatter_add(const int64_t* ids, const float* grads, int64_t n) = 0;
  // The rows of items 1..V, [V, D] (unseen items of a dynamic table: their initial rows);
  // valid until the next call.
  virtual const float* all_rows() = 0;

  // The state kept outside the ParameterSet (nothing for the static table).
  virtual void initialize(uint64_t seed) = 0;
  virtual void zero_grad() = 0;
  virtual double grad_squares() = 0;  // Σ g² over the row gradients
  virtual void scale_grads(float scale) = 0;
  // One Adam step at rate `lr` of the rows with gradients; global_step counts from 1.
  virtual void step(const cpu::AdamConfig& adam, float lr, int64_t global_step) = 0;
  virtual DynamicTable* table() const = 0;  // null for the static table
};

// The options of a dynamic item table drawn from `seed`: dim D, Adam state, normal(0,
// kItemInitStd) rows keyed by (seed', id). The CUDA model's table uses the same.
TableOptions item_table_options(const RetrievalConfig& config, uint64_t seed);

// The store config.item_embeddings names; item_param is the index of item_embedding in
// `params` (static only).
std::unique_ptr<ItemEmbeddings> make_item_embeddings(const RetrievalConfig& config,
                                                     ParameterSet& params, int item_param);

}  // namespace genrec
