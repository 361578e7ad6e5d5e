// Full-ranking evaluation: every user's held-out item is ranked against all V items (no
// sampled negatives, history items not removed), as in the SASRec/TIGER protocol.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/batcher.h"
#include "model/retrieval_model.h"

namespace genrec {

struct RankingMetrics {
  double hr10 = 0, ndcg10 = 0, hr50 = 0, ndcg50 = 0, mrr = 0;
  int64_t users = 0;
  std::string format() const;  // "HR@10=… NDCG@10=… HR@50=… NDCG@50=… MRR=…"
};

// Adds one ranked target (rank 0 = first) to running sums; finish() divides by the count.
void accumulate_rank(RankingMetrics& metrics, int64_t rank);
void finish(RankingMetrics& metrics);

// Ranks the last event of each window after encoding the events before it.
RankingMetrics evaluate(RetrievalModel& model, const SequenceDataset& dataset,
                        const ItemVocabulary& vocabulary, const std::vector<Window>& windows,
                        int64_t batch_size = 256);

// Most-popular baseline on the same windows: items ranked by training-split frequency.
RankingMetrics evaluate_popularity(const SequenceDataset& dataset, const ItemVocabulary& vocabulary,
                                   const std::vector<Window>& train_windows,
                                   const std::vector<Window>& windows);

}  // namespace genrec
