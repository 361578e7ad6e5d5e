// Top-k recommendation for one user from their whole history (the last max_len events).
#pragma once

#include <cstdint>
#include <vector>

#include "data/sequence_dataset.h"
#include "model/retrieval_model.h"

namespace genrec {

struct Recommendation {
  int64_t item = 0;  // raw item id
  float score = 0;   // cosine similarity
};

// Events whose item the vocabulary does not know are skipped (the model has no embedding
// for them). Fails when none of the user's events is known.
std::vector<Recommendation> recommend(RetrievalModel& model, const ItemVocabulary& vocabulary,
                                      const SequenceDataset& dataset, int64_t user_index, int64_t k,
                                      bool exclude_history);

}  // namespace genrec
