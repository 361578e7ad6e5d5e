// 64-bit integer mixing (the splitmix64 finaliser): spreads any key or counter over all bits,
// for hash-table slots, sketch rows and per-step RNG keys. Callable from CUDA kernels too.
#pragma once

#include <cstdint>

#include "core/host_device.h"

namespace genrec {

GENREC_HOST_DEVICE uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace genrec
