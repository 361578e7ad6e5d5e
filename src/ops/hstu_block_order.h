// The order in which the fused HSTU attention's blocks take their work
// (ops/cuda/hstu_attention_fused.cu), as plain arithmetic that the CPU tests check. A launch is
// a 1-D grid of `tiles` blocks per (sequence, head) pair. The grid runs group by group of
// pairs, and within a group rank by rank over all its pairs: the costliest tiles (rank 0) of a
// group go out first and its cheapest last, so the blocks still running when the grid drains
// are short ones, and a group's rows stay in L2 while its ranks pass.
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/host_device.h"

namespace genrec {

struct BlockGroups {
  int heads_per_group = 1;   // (sequence, head) pairs per group
  int last_group_first = 0;  // the pair the last group starts at: it holds the last two groups
};

// Groups of `pairs` pairs: as few as keep the rows a group's blocks share, `bytes_per_pair`
// each, within `budget` bytes, with the pairs spread evenly over them; the last two run as one.
// One group for a whole batch (64 MB of K and V live at once) ran B 32 N 1024 D 128 30% slower
// than groups of a third of L2. Groups filled to the budget left a small last group (2 pairs of
// 128 in the backward at B 16 N 2048 H 8) whose costliest tiles went out while every other
// block drained and ran on alone; a last group of its own does the same with any sizes.
inline BlockGroups block_groups(int64_t pairs, int64_t bytes_per_pair, int64_t budget) {
  pairs = std::max<int64_t>(pairs, 1);
  const int64_t most = std::clamp<int64_t>(budget / std::max<int64_t>(bytes_per_pair, 1), 1, pairs);
  const int64_t count = (pairs + most - 1) / most;
  const int64_t per_group = (pairs + count - 1) / count;
  const int64_t groups = (pairs + per_group - 1) / per_group;
  return {static_cast<int>(per_group),
          static_cast<int>(groups >= 2 ? (groups - 2) * per_group : 0)};
}

struct BlockWork {
  int rank;  // 0 .. tiles - 1, in order of decreasing work
  int head;
  int seq;
};

// The work of grid block `block` of a launch over `pairs` = num_heads x sequences pairs (32-bit:
// the host keeps the grid below 2^31 blocks).
GENREC_HOST_DEVICE BlockWork block_work(unsigned block, unsigned pairs, unsigned num_heads,
                                        BlockGroups groups, unsigned tiles) {
  const unsigned per_group = static_cast<unsigned>(groups.heads_per_group);
  const unsigned last_first = static_cast<unsigned>(groups.last_group_first);
  const bool last = block >= last_first * tiles;
  const unsigned first = last ? last_first : block / (per_group * tiles) * per_group;
  const unsigned size = last ? pairs - last_first : per_group;
  const unsigned r = block - first * tiles;
  const unsigned pair = first + r % size;
  return {static_cast<int>(r / size), static_cast<int>(pair % num_heads),
          static_cast<int>(pair / num_heads)};
}

}  // namespace genrec
