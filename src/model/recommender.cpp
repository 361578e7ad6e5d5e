#include "model/recommender.h"

#include <algorithm>
#include <limits>

#include "core/error.h"
#include "ops/gemm.h"
#include "ops/topk.h"

namespace genrec {

std::vector<Recommendation> recommend(RetrievalModel& model, const ItemVocabulary& vocabulary,
                                      const SequenceDataset& dataset, int64_t user_index, int64_t k,
                                      bool exclude_history) {
  GENREC_CHECK(user_index >= 0 && user_index < dataset.num_users(), "user index {} out of range",
               user_index);
  const int64_t V = model.config().num_items, D = model.config().dim;
  GENREC_CHECK(k > 0 && k <= V, "k = {} must be in 1..{}", k, V);
  TokenBatch batch;
  for (int64_t e = dataset.offsets[user_index]; e < dataset.offsets[user_index + 1]; ++e) {
    int64_t index = vocabulary.index_of(dataset.items[e]);
    if (index == 0) continue;
    batch.items.push_back(index);
    batch.timestamps.push_back(dataset.timestamps[e]);
  }
  GENREC_CHECK(!batch.items.empty(), "user {} has no event with an item the model knows",
               dataset.user_ids[user_index]);
  // The whole history is excluded, the model reads only its last max_len events.
  const std::vector<int64_t> history = batch.items;
  int64_t keep = std::min<int64_t>(batch.num_tokens(), model.config().max_len);
  batch.items.erase(batch.items.begin(), batch.items.end() - keep);
  batch.timestamps.erase(batch.timestamps.begin(), batch.timestamps.end() - keep);
  batch.offsets.push_back(keep);

  std::vector<float> user(D), items, scores(V);
  model.encode_users(batch, user.data());
  model.item_embeddings(items);
  cpu::gemm(false, true, 1, V, D, 1.0f, user.data(), D, items.data(), D, 0.0f, scores.data(), V);
  if (exclude_history) {
    for (int64_t index : history) scores[index - 1] = -std::numeric_limits<float>::infinity();
  }
  std::vector<int64_t> top(k);
  std::vector<float> values(k);
  cpu::topk(top.data(), values.data(), scores.data(), 1, V, k);
  std::vector<Recommendation> out;
  for (int64_t i = 0; i < k; ++i) out.push_back({vocabulary.raw_id(top[i] + 1), values[i]});
  return out;
}

}  // namespace genrec
