// Conservative update: a sighting raises only the counters equal to the key's current minimum,
// which keeps the over-count from colliding keys low without ever under-counting.
#include "embedding/admission.h"

#include <algorithm>
#include <bit>

#include "core/error.h"
#include "core/hash.h"

namespace genrec {
CountingFilter::CountingFilter(const AdmissionOptions& options) : options_(options) {
  GENREC_CHECK(options.threshold >= 1 && options.threshold <= 255,
               "admission: threshold must be in [1, 255], got {}", options.threshold);
  GENREC_CHECK(options.num_hashes >= 1 && options.num_hashes <= 16,
               "admission: num_hashes must be in [1, 16], got {}", options.num_hashes);
  GENREC_CHECK(options.width >= 1 && options.width <= (int64_t{1} << 32),
               "admission: width must be in [1, 2^32], got {}", options.width);
  const uint64_t width = std::bit_ceil(static_cast<uint64_t>(options.width));
  options_.width = static_cast<int64_t>(width);
  mask_ = width - 1;
  const uint64_t total = width * static_cast<uint64_t>(options.num_hashes);
  counters_ = std::make_unique<std::atomic<uint8_t>[]>(total);
  clear();
}

uint64_t CountingFilter::index(uint64_t key, int row) const {
  const uint64_t h = mix64(key ^ mix64(options_.seed + 0x9E3779B97F4A7C15ull * (row + 1)));
  return static_cast<uint64_t>(row) * (mask_ + 1) + (h & mask_);
}

bool CountingFilter::record(uint64_t key) {
  if (options_.threshold == 1) return true;
  uint64_t idx[16];
  uint32_t current = 255;
  for (int r = 0; r < options_.num_hashes; ++r) {
    idx[r] = index(key, r);
    current = std::min<uint32_t>(current, counters_[idx[r]].load(std::memory_order_relaxed));
  }
  if (current < 255) {
    for (int r = 0; r < options_.num_hashes; ++r) {
      uint8_t c = counters_[idx[r]].load(std::memory_order_relaxed);
      // Raise counters at the minimum to minimum + 1; a concurrent raise wins the CAS race.
      while (c <= current && !counters_[idx[r]].compare_exchange_weak(
                                 c, static_cast<uint8_t>(current + 1), std::memory_order_relaxed)) {
      }
    }
    ++current;
  }
  return current >= static_cast<uint32_t>(options_.threshold);
}

uint32_t CountingFilter::estimate(uint64_t key) const {
  uint32_t current = 255;
  for (int r = 0; r < options_.num_hashes; ++r) {
    current = std::min<uint32_t>(current, counters_[index(key, r)].load(std::memory_order_relaxed));
  }
  return current;
}

void CountingFilter::decay() {
  const uint64_t total = (mask_ + 1) * static_cast<uint64_t>(options_.num_hashes);
  for (uint64_t i = 0; i < total; ++i) {
    counters_[i].store(counters_[i].load(std::memory_order_relaxed) >> 1,
                       std::memory_order_relaxed);
  }
}

void CountingFilter::clear() {
  const uint64_t total = (mask_ + 1) * static_cast<uint64_t>(options_.num_hashes);
  for (uint64_t i = 0; i < total; ++i) counters_[i].store(0, std::memory_order_relaxed);
}

}  // namespace genrec
