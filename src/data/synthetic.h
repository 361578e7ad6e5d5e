// Synthetic interaction sequences with structure a sequential model can learn and a
// popularity baseline cannot: items live in clusters with Zipfian popularity inside each
// cluster, every user prefers a few clusters, and every item has a few likely successors.
#pragma once

#include <cstdint>

#include "data/sequence_dataset.h"

namespace genrec {

struct SyntheticConfig {
  int64_t num_users = 2000;  // raw user ids 1..num_users
  int64_t num_items = 1000;  // raw item ids 1..num_items
  int64_t num_clusters = 20;
  int64_t min_length = 10;  // events per user, min_length + exponential, clipped to max_length
  int64_t max_length = 50;
  double mean_length = 25;              // before clipping
  double zipf_exponent = 1.0;           // popularity of the item of rank r in its cluster ∝ 1/r^s
  double markov_probability = 0.6;      // P(next item is one of the previous item's successors)
  int64_t successors_per_item = 3;      // successor j is chosen with weight 2^-j
  double successor_same_cluster = 0.9;  // P(a successor lies in its item's cluster)
  int64_t max_user_clusters = 3;        // each user prefers 1..max_user_clusters clusters
  double mean_gap_seconds = 4 * 3600.0;  // exponential gaps between events (at least 1 s)
  int64_t start_time = 1600000000;       // first events fall in the year after this time
  uint64_t seed = 1;
};

// Deterministic for a given config (seed included); users are generated independently from
// Philox streams (seed, 1 + user), the item structure from stream (seed, 0).
SequenceDataset generate_synthetic(const SyntheticConfig& config);

}  // namespace genrec
