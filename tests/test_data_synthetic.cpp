// The synthetic generator: determinism, bounds, and structure that beats popularity.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <unordered_map>

#include "core/error.h"
#include "data/synthetic.h"

namespace genrec {
namespace {

TEST(DataSynthetic, DeterministicForASeed) {
  SyntheticConfig config;
  config.num_users = 300;
  SequenceDataset a = generate_synthetic(config), b = generate_synthetic(config);
  EXPECT_EQ(a.user_ids, b.user_ids);
  EXPECT_EQ(a.offsets, b.offsets);
  EXPECT_EQ(a.items, b.items);
  EXPECT_EQ(a.timestamps, b.timestamps);
  EXPECT_EQ(a.actions, b.actions);
  config.seed += 1;
  SequenceDataset c = generate_synthetic(config);
  EXPECT_NE(a.items, c.items);
  // Users come from their own streams: more users leave the first ones unchanged.
  config.seed -= 1;
  config.num_users = 100;
  SequenceDataset d = generate_synthetic(config);
  EXPECT_TRUE(std::equal(d.items.begin(), d.items.end(), a.items.begin()));
}

TEST(DataSynthetic, RespectsBoundsAndIdRanges) {
  SyntheticConfig config;
  config.num_users = 1000;
  config.num_items = 400;
  config.min_length = 5;
  config.max_length = 30;
  config.mean_length = 12;
  SequenceDataset ds = generate_synthetic(config);
  ds.validate();
  ASSERT_EQ(ds.num_users(), 1000);
  int64_t shortest = INT64_MAX, longest = 0;
  for (int64_t u = 0; u < ds.num_users(); ++u) {
    EXPECT_EQ(ds.user_ids[u], u + 1);
    shortest = std::min(shortest, ds.length(u));
    longest = std::max(longest, ds.length(u));
    for (int64_t e = ds.offsets[u] + 1; e < ds.offsets[u + 1]; ++e) {
      EXPECT_GT(ds.timestamps[e], ds.timestamps[e - 1]);
    }
  }
  EXPECT_EQ(shortest, 5);
  EXPECT_EQ(longest, 30);
  const double mean = static_cast<double>(ds.num_events()) / ds.num_users();
  EXPECT_GT(mean, 9.0);
  EXPECT_LT(mean, 13.0);
  for (int64_t item : ds.items) {
    ASSERT_GE(item, 1);
    ASSERT_LE(item, 400);
  }
  for (int32_t action : ds.actions) {
    ASSERT_GE(action, 1);
    ASSERT_LE(action, 5);
  }
  EXPECT_EQ(*std::min_element(ds.actions.begin(), ds.actions.end()), 1);
  EXPECT_EQ(*std::max_element(ds.actions.begin(), ds.actions.end()), 5);
}

// Hit rate on each user's last item of "the most common successor (in the earlier events) of
// the previous item" versus "the most popular item" (both counted without the last items).
std::pair<double, double> bigram_and_popularity_hit_rates(const SequenceDataset& ds) {
  std::unordered_map<int64_t, int64_t> popularity;
  std::unordered_map<int64_t, std::map<int64_t, int64_t>> successors;
  for (int64_t u = 0; u < ds.num_users(); ++u) {
    for (int64_t e = ds.offsets[u]; e < ds.offsets[u + 1] - 1; ++e) {
      ++popularity[ds.items[e]];
      if (e + 1 < ds.offsets[u + 1] - 1) ++successors[ds.items[e]][ds.items[e + 1]];
    }
  }
  int64_t top = 0, top_count = -1;
  for (auto [item, count] : popularity) {
    if (count > top_count || (count == top_count && item < top)) top = item, top_count = count;
  }
  int64_t bigram_hits = 0, popular_hits = 0;
  for (int64_t u = 0; u < ds.num_users(); ++u) {
    const int64_t last = ds.items[ds.offsets[u + 1] - 1], prev = ds.items[ds.offsets[u + 1] - 2];
    popular_hits += last == top;
    int64_t guess = top, best = -1;
    for (auto [item, count] : successors[prev]) {
      if (count > best) guess = item, best = count;
    }
    bigram_hits += last == guess;
  }
  return {static_cast<double>(bigram_hits) / ds.num_users(),
          static_cast<double>(popular_hits) / ds.num_users()};
}

TEST(DataSynthetic, DefaultsHaveLearnableSequentialStructure) {
  SequenceDataset ds = generate_synthetic(SyntheticConfig{});
  EXPECT_EQ(ds.num_users(), 2000);
  auto [bigram, popular] = bigram_and_popularity_hit_rates(ds);
  EXPECT_GT(bigram, 0.2);
  EXPECT_GT(bigram, 4 * popular) << "bigram " << bigram << ", popularity " << popular;

  // Without the Markov part the bigram predictor loses its edge: the structure is what helps.
  SyntheticConfig no_markov;
  no_markov.markov_probability = 0;
  auto [bigram0, popular0] = bigram_and_popularity_hit_rates(generate_synthetic(no_markov));
  EXPECT_LT(bigram0, bigram / 2) << "bigram " << bigram0 << ", popularity " << popular0;
}

TEST(DataSynthetic, RejectsInvalidConfigs) {
  auto with = [](auto change) {
    SyntheticConfig c;
    change(c);
    return c;
  };
  EXPECT_THROW(generate_synthetic(with([](auto& c) { c.num_clusters = 0; })), Error);
  EXPECT_THROW(generate_synthetic(with([](auto& c) { c.num_items = 5; })), Error);
  EXPECT_THROW(generate_synthetic(with([](auto& c) { c.min_length = 60; })), Error);
  EXPECT_THROW(generate_synthetic(with([](auto& c) { c.mean_length = 2; })), Error);
  EXPECT_THROW(generate_synthetic(with([](auto& c) { c.markov_probability = 1.5; })), Error);
  EXPECT_THROW(generate_synthetic(with([](auto& c) { c.max_user_clusters = 0; })), Error);
  EXPECT_EQ(generate_synthetic(with([](auto& c) { c.num_users = 0; })).num_users(), 0);
}

}  // namespace
}  // namespace genrec
