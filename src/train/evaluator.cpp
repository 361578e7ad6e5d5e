#include "train/evaluator.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "ops/topk.h"

namespace genrec {

std::string RankingMetrics::format() const {
  return fmt::format("HR@10={:.4f} NDCG@10={:.4f} HR@50={:.4f} NDCG@50={:.4f} MRR={:.4f}", hr10,
                     ndcg10, hr50, ndcg50, mrr);
}

void accumulate_rank(RankingMetrics& m, int64_t rank) {
  double gain = 1.0 / std::log2(static_cast<double>(rank) + 2.0);
  if (rank < 10) m.hr10 += 1, m.ndcg10 += gain;
  if (rank < 50) m.hr50 += 1, m.ndcg50 += gain;
  m.mrr += 1.0 / static_cast<double>(rank + 1);
  m.users += 1;
}

void finish(RankingMetrics& m) {
  if (m.users == 0) return;
  double n = static_cast<double>(m.users);
  m.hr10 /= n, m.ndcg10 /= n, m.hr50 /= n, m.ndcg50 /= n, m.mrr /= n;
}

RankingMetrics evaluate(RetrievalModel& model, const SequenceDataset& dataset,
                        const ItemVocabulary& vocabulary, const std::vector<Window>& windows,
                        int64_t batch_size) {
  Batcher batcher(dataset, vocabulary, windows, {batch_size, 0, /*shuffle=*/false, 0});
  batcher.start_epoch(0);
  RankingMetrics metrics;
  std::vector<int64_t> targets, ranks;
  for (int64_t i = 0; i < batcher.num_batches(); ++i) {
    TokenBatch batch = history_batch(batcher.make_batch(i), &targets);
    ranks.resize(batch.batch_size());
    model.rank_targets(batch, targets.data(), ranks.data());
    for (int64_t r : ranks) accumulate_rank(metrics, r);
  }
  finish(metrics);
  return metrics;
}

RankingMetrics evaluate_popularity(const SequenceDataset& dataset, const ItemVocabulary& vocabulary,
                                   const std::vector<Window>& train_windows,
                                   const std::vector<Window>& windows) {
  std::vector<float> count(vocabulary.size(), 0.0f);
  for (const Window& w : train_windows) {
    for (int64_t e = w.begin; e < w.end; ++e) count[vocabulary.index_of(dataset.items[e]) - 1] += 1;
  }
  RankingMetrics metrics;
  for (const Window& w : windows) {
    int64_t target = vocabulary.index_of(dataset.items[w.end - 1]) - 1;
    int64_t rank = 0;
    cpu::rank_of_target(&rank, count.data(), &target, 1, vocabulary.size());
    accumulate_rank(metrics, rank);
  }
  finish(metrics);
  return metrics;
}

}  // namespace genrec
