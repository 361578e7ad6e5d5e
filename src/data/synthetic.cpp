// Each user's sequence is a mixture of two sources: with markov_probability the next item is a
// successor of the previous one (a per-item table fixed by the seed), otherwise a popular item
// of one of the user's clusters. The Markov part is what a sequential model can learn beyond
// popularity; users draw from their own Philox stream, so changing num_users keeps the others.
#include "data/synthetic.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/logging.h"
#include "core/philox.h"

namespace genrec {
namespace {

double uniform01(Philox& rng) {
  return static_cast<double>(rng.next_u64() >> 11) * 0x1.0p-53;
}

// Index drawn with probability proportional to the increments of `cdf` (cdf.back() = total).
int64_t draw(Philox& rng, const std::vector<double>& cdf) {
  double x = uniform01(rng) * cdf.back();
  auto it = std::upper_bound(cdf.begin(), cdf.end(), x);
  return std::min<int64_t>(it - cdf.begin(), static_cast<int64_t>(cdf.size()) - 1);
}

}  // namespace

SequenceDataset generate_synthetic(const SyntheticConfig& c) {
  GENREC_CHECK(c.num_users >= 0, "synthetic: num_users must be >= 0, got {}", c.num_users);
  GENREC_CHECK(c.num_clusters >= 1 && c.num_items >= c.num_clusters,
               "synthetic: need 1 <= num_clusters <= num_items, got {} clusters, {} items",
               c.num_clusters, c.num_items);
  GENREC_CHECK(c.min_length >= 1 && c.min_length <= c.max_length,
               "synthetic: need 1 <= min_length <= max_length, got {} and {}", c.min_length,
               c.max_length);
  GENREC_CHECK(c.mean_length >= static_cast<double>(c.min_length),
               "synthetic: mean_length {} is below min_length {}", c.mean_length, c.min_length);
  GENREC_CHECK(c.markov_probability >= 0 && c.markov_probability <= 1,
               "synthetic: markov_probability must be in [0, 1], got {}", c.markov_probability);
  GENREC_CHECK(c.successor_same_cluster >= 0 && c.successor_same_cluster <= 1,
               "synthetic: successor_same_cluster must be in [0, 1], got {}",
               c.successor_same_cluster);
  GENREC_CHECK(c.successors_per_item >= 1, "synthetic: successors_per_item must be >= 1, got {}",
               c.successors_per_item);
  GENREC_CHECK(c.max_user_clusters >= 1 && c.max_user_clusters <= c.num_clusters,
               "synthetic: need 1 <= max_user_clusters <= num_clusters, got {}",
               c.max_user_clusters);
  GENREC_CHECK(c.zipf_exponent >= 0, "synthetic: zipf_exponent must be >= 0, got {}",
               c.zipf_exponent);
  GENREC_CHECK(c.mean_gap_seconds >= 0, "synthetic: mean_gap_seconds must be >= 0, got {}",
               c.mean_gap_seconds);

  // Item structure: a random permutation deals items to clusters round-robin; an item's rank in
  // its cluster is its round, and its popularity is 1 / (rank + 1)^s.
  Philox rng(c.seed, 0);
  std::vector<int64_t> perm(c.num_items);
  for (int64_t i = 0; i < c.num_items; ++i) perm[i] = i;
  for (int64_t i = c.num_items - 1; i > 0; --i) {
    std::swap(perm[i], perm[static_cast<int64_t>(rng.below(static_cast<uint64_t>(i) + 1))]);
  }
  std::vector<std::vector<int64_t>> members(c.num_clusters);
  std::vector<std::vector<double>> cdf(c.num_clusters);
  std::vector<int64_t> cluster_of(c.num_items);
  for (int64_t p = 0; p < c.num_items; ++p) {
    const int64_t cluster = p % c.num_clusters, rank = p / c.num_clusters;
    members[cluster].push_back(perm[p]);
    double prev = cdf[cluster].empty() ? 0.0 : cdf[cluster].back();
    cdf[cluster].push_back(prev + std::pow(static_cast<double>(rank + 1), -c.zipf_exponent));
    cluster_of[perm[p]] = cluster;
  }

  // Successor table: successor j of an item is taken with weight 2^-j; most lie in the item's
  // cluster (drawn by popularity, avoiding the item itself when the cluster has others).
  const int64_t k = c.successors_per_item;
  std::vector<int64_t> successors(c.num_items * k);
  std::vector<double> successor_cdf(k);
  for (int64_t j = 0; j < k; ++j) {
    successor_cdf[j] = (j > 0 ? successor_cdf[j - 1] : 0.0) + std::ldexp(1.0, -static_cast<int>(j));
  }
  for (int64_t item = 0; item < c.num_items; ++item) {
    const int64_t cluster = cluster_of[item];
    for (int64_t j = 0; j < k; ++j) {
      int64_t next = item;
      if (uniform01(rng) < c.successor_same_cluster) {
        for (int attempt = 0; attempt < 8 && next == item; ++attempt) {
          next = members[cluster][draw(rng, cdf[cluster])];
        }
      } else {
        next = static_cast<int64_t>(rng.below(static_cast<uint64_t>(c.num_items)));
      }
      successors[item * k + j] = next;
    }
  }

  SequenceDataset ds;
  std::vector<int64_t> items, times, clusters;
  std::vector<int32_t> actions;
  for (int64_t user = 0; user < c.num_users; ++user) {
    Philox urng(c.seed, 1 + static_cast<uint64_t>(user));
    double extra =
        -(c.mean_length - static_cast<double>(c.min_length)) * std::log1p(-uniform01(urng));
    const int64_t length =
        std::min<int64_t>(c.max_length, c.min_length + static_cast<int64_t>(std::llround(extra)));

    const int64_t num_prefs = 1 + static_cast<int64_t>(urng.below(c.max_user_clusters));
    clusters.clear();
    while (static_cast<int64_t>(clusters.size()) < num_prefs) {
      int64_t cluster = static_cast<int64_t>(urng.below(c.num_clusters));
      if (std::find(clusters.begin(), clusters.end(), cluster) == clusters.end()) {
        clusters.push_back(cluster);
      }
    }

    items.resize(length);
    times.resize(length);
    actions.resize(length);
    int64_t t = c.start_time + static_cast<int64_t>(urng.below(365 * 86400));
    for (int64_t e = 0; e < length; ++e) {
      int64_t item;
      if (e > 0 && uniform01(urng) < c.markov_probability) {
        item = successors[(items[e - 1] - 1) * k + draw(urng, successor_cdf)];
      } else {
        int64_t cluster = clusters[urng.below(clusters.size())];
        item = members[cluster][draw(urng, cdf[cluster])];
      }
      items[e] = item + 1;  // raw ids start at 1
      if (e > 0) {
        double gap = -c.mean_gap_seconds * std::log1p(-uniform01(urng));
        t += std::max<int64_t>(1, std::llround(gap));
      }
      times[e] = t;
      actions[e] = 1 + static_cast<int32_t>(urng.below(5));
    }
    ds.add_user(user + 1, items, times, actions);
  }
  log_debug("synthetic: {} users, {} items, {} events", ds.num_users(), c.num_items,
            ds.num_events());
  return ds;
}

}  // namespace genrec
