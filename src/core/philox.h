// Counter-based RNG (Philox4x32-10, Salmon et al. 2011). Element i of stream (seed, offset)
// depends only on (seed, offset, i), so the CPU and a CUDA kernel produce the same numbers
// for the same element whatever the thread layout, and dropout masks can be recomputed in
// the backward pass instead of stored.
#pragma once

#include <cstdint>

#include "core/host_device.h"

namespace genrec {

struct Philox4 {
  uint32_t x, y, z, w;
};

GENREC_HOST_DEVICE uint32_t philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
}

// One 128-bit block for counter (c0..c3) under key (k0, k1).
GENREC_HOST_DEVICE Philox4 philox4x32(Philox4 c, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    uint32_t lo0 = philox_mulhilo(kM0, c.x, &hi0);
    uint32_t lo1 = philox_mulhilo(kM1, c.z, &hi1);
    c = Philox4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
    k0 += kW0;
    k1 += kW1;
  }
  return c;
}

// The 32-bit word `index` of the stream (seed, offset).
GENREC_HOST_DEVICE uint32_t philox_u32(uint64_t seed, uint64_t offset, uint64_t index) {
  uint64_t block = index >> 2;
  Philox4 c{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
            static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)};
  Philox4 r = philox4x32(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  switch (index & 3) {
    case 0:
      return r.x;
    case 1:
      return r.y;
    case 2:
      return r.z;
    default:
      return r.w;
  }
}

// Uniform in [0, 1) with 24 random bits (exactly representable, identical on CPU and GPU).
GENREC_HOST_DEVICE float philox_uniform(uint64_t seed, uint64_t offset, uint64_t index) {
  return static_cast<float>(philox_u32(seed, offset, index) >> 8) * (1.0f / 16777216.0f);
}

// A host-side stream: successive draws advance the index. Seeding is explicit everywhere.
class Philox {
 public:
  explicit Philox(uint64_t seed, uint64_t offset = 0) : seed_(seed), offset_(offset) {}
  uint32_t next_u32() { return philox_u32(seed_, offset_, index_++); }
  uint64_t next_u64() {
    uint64_t hi = next_u32();
    return (hi << 32) | next_u32();
  }
  float uniform() { return philox_uniform(seed_, offset_, index_++); }
  // Uniform integer in [0, n) (n > 0), by 64-bit multiply-shift.
  uint64_t below(uint64_t n) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(next_u64()) * n) >> 64);
  }
  float normal();  // standard normal, Box-Muller

 private:
  uint64_t seed_, offset_, index_ = 0;
};

}  // namespace genrec
