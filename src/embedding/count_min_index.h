// Where a key is counted in the admission sketch: one definition for the CPU CountingFilter and
// the CUDA CudaCountingFilter, so that both raise the same counters for the same key and their
// counters can be compared, or saved by one and loaded by the other.
#pragma once

#include <cstdint>

#include "core/hash.h"
#include "core/host_device.h"

namespace genrec {

// The counter of `key` in sketch row `row` (0 <= row < num_hashes), row-major over rows of
// width = mask + 1 counters (a power of two).
GENREC_HOST_DEVICE uint64_t count_min_index(uint64_t key, int row, uint64_t mask, uint64_t seed) {
  const uint64_t h =
      mix64(key ^ mix64(seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(row + 1)));
  return static_cast<uint64_t>(row) * (mask + 1) + (h & mask);
}

}  // namespace genrec
