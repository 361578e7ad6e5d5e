#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "ops/hstu_block_order.h"

namespace genrec {
namespace {

// Walks the whole grid of `tiles` blocks per pair in block order and checks that it covers
// every (rank, pair) exactly once, that a group's blocks are one run of the grid holding its
// pairs' every rank with ranks never decreasing, and that groups are the sizes block_groups
// promises.
void check_grid(int64_t pairs, unsigned num_heads, unsigned tiles, BlockGroups groups) {
  SCOPED_TRACE(testing::Message() << pairs << " pairs, " << tiles << " tiles, groups of "
                                  << groups.heads_per_group << ", last from "
                                  << groups.last_group_first);
  std::vector<int> seen(pairs * tiles, 0);
  int64_t group_start = 0;  // pair where the current group starts
  int prev_rank = -1, prev_group_start = -1;
  for (unsigned block = 0; block < pairs * tiles; ++block) {
    const BlockWork w = block_work(block, static_cast<unsigned>(pairs), num_heads, groups, tiles);
    ASSERT_GE(w.rank, 0);
    ASSERT_LT(w.rank, static_cast<int>(tiles));
    ASSERT_GE(w.head, 0);
    ASSERT_LT(w.head, static_cast<int>(num_heads));
    const int64_t pair = static_cast<int64_t>(w.seq) * num_heads + w.head;
    ASSERT_GE(pair, 0);
    ASSERT_LT(pair, pairs);
    ++seen[pair * tiles + w.rank];
    // The group holding this pair: full groups of heads_per_group, then the last one.
    group_start = pair >= groups.last_group_first
                      ? groups.last_group_first
                      : pair / groups.heads_per_group * groups.heads_per_group;
    if (group_start == prev_group_start) {
      EXPECT_GE(w.rank, prev_rank) << "block " << block;
    } else {
      EXPECT_GT(group_start, prev_group_start) << "block " << block << ": groups run in order";
      EXPECT_EQ(w.rank, 0) << "block " << block << ": a group starts with its costliest tiles";
    }
    prev_rank = w.rank;
    prev_group_start = static_cast<int>(group_start);
  }
  for (int64_t e = 0; e < pairs * static_cast<int64_t>(tiles); ++e) {
    ASSERT_EQ(seen[e], 1) << "pair " << e / tiles << " rank " << e % tiles;
  }
}

TEST(BlockOrder, GroupsAreEvenAndTheLastTwoRunAsOne) {
  constexpr int64_t kMiB = 1 << 20;
  // The backward of the benchmark's ragged B 16, N 2048 (longest 1869), H 8, D 64: Q, dO and
  // the fp32 dQ sums of a pair in a third of 50 MiB hold 18 pairs. Filled to that, the 128 pairs
  // made 7 groups of 18 and a last one of 2; spread evenly they are 8 of 16, the last two as one.
  BlockGroups g = block_groups(128, 1869 * 64 * 8, 50 * kMiB / 3);
  EXPECT_EQ(g.heads_per_group, 16);
  EXPECT_EQ(g.last_group_first, 96);
  // Everything fits: one group.
  g = block_groups(32, kMiB, 64 * kMiB);
  EXPECT_EQ(g.heads_per_group, 32);
  EXPECT_EQ(g.last_group_first, 0);
  // Two groups are one.
  g = block_groups(10, kMiB, 6 * kMiB);
  EXPECT_EQ(g.heads_per_group, 5);
  EXPECT_EQ(g.last_group_first, 0);
  // Not even one pair fits: groups of one.
  g = block_groups(5, 4 * kMiB, kMiB);
  EXPECT_EQ(g.heads_per_group, 1);
  EXPECT_EQ(g.last_group_first, 3);
  // No budget or no bytes at all.
  EXPECT_EQ(block_groups(7, 0, 0).heads_per_group, 1);
  EXPECT_EQ(block_groups(0, kMiB, kMiB).heads_per_group, 1);
}

TEST(BlockOrder, GridCoversEveryTileOfEveryPairOnceCostliestFirst) {
  for (int64_t pairs : {1, 2, 3, 7, 16, 33, 128, 257}) {
    for (unsigned num_heads : {1u, 4u}) {
      if (pairs % num_heads != 0) continue;
      for (unsigned tiles : {1u, 3u, 16u}) {
        for (int64_t fit : {1, 2, 5, 18, 40, 1000}) {  // pairs the budget holds
          const BlockGroups groups = block_groups(pairs, 1000, fit * 1000);
          ASSERT_GE(groups.heads_per_group, 1);
          ASSERT_LE(groups.heads_per_group, std::max<int64_t>(fit, 1));
          ASSERT_EQ(groups.last_group_first % groups.heads_per_group, 0);
          // The last group holds more than one group's pairs unless it is the only one.
          const int64_t last = pairs - groups.last_group_first;
          if (groups.last_group_first > 0) {
            ASSERT_GT(last, groups.heads_per_group);
            ASSERT_LE(last, 2 * groups.heads_per_group);
          }
          check_grid(pairs, num_heads, tiles, groups);
        }
      }
    }
  }
}

}  // namespace
}  // namespace genrec
