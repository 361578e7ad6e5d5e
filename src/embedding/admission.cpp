// Conservative update: a sighting raises only the counters equal to the key's current minimum,
// which keeps the over-count from colliding keys low without ever under-counting.
#include "embedding/admission.h"

#include <algorithm>
#include <bit>

#include "core/error.h"
#include "embedding/count_min_index.h"

namespace genrec {

AdmissionOptions checked_admission_options(const AdmissionOptions& options) {
  GENREC_CHECK(options.threshold >= 1 && options.threshold <= 255,
               "admission: threshold must be in [1, 255], got {}", options.threshold);
  GENREC_CHECK(options.num_hashes >= 1 && options.num_hashes <= 16,
               "admission: num_hashes must be in [1, 16], got {}", options.num_hashes);
  GENREC_CHECK(options.width >= 1 && options.width <= (int64_t{1} << 32),
               "admission: width must be in [1, 2^32], got {}", options.width);
  AdmissionOptions checked = options;
  checked.width = static_cast<int64_t>(std::bit_ceil(static_cast<uint64_t>(options.width)));
  return checked;
}

CountingFilter::CountingFilter(const AdmissionOptions& options)
    : options_(checked_admission_options(options)) {
  mask_ = static_cast<uint64_t>(options_.width) - 1;
  counters_ = std::make_unique<std::atomic<uint8_t>[]>(num_counters());
  clear();
}

bool CountingFilter::record(uint64_t key) {
  if (options_.threshold == 1) return true;
  uint64_t idx[16];
  uint32_t current = 255;
  for (int r = 0; r < options_.num_hashes; ++r) {
    idx[r] = count_min_index(key, r, mask_, options_.seed);
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
    const uint64_t i = count_min_index(key, r, mask_, options_.seed);
    current = std::min<uint32_t>(current, counters_[i].load(std::memory_order_relaxed));
  }
  return current;
}

void CountingFilter::decay() {
  for (int64_t i = 0; i < num_counters(); ++i) {
    counters_[i].store(counters_[i].load(std::memory_order_relaxed) >> 1,
                       std::memory_order_relaxed);
  }
}

void CountingFilter::clear() {
  for (int64_t i = 0; i < num_counters(); ++i) counters_[i].store(0, std::memory_order_relaxed);
}

std::vector<uint8_t> CountingFilter::counters() const {
  std::vector<uint8_t> out(num_counters());
  for (int64_t i = 0; i < num_counters(); ++i) {
    out[i] = counters_[i].load(std::memory_order_relaxed);
  }
  return out;
}

void CountingFilter::load_counters(const std::vector<uint8_t>& counters) {
  GENREC_CHECK(static_cast<int64_t>(counters.size()) == num_counters(),
               "admission: {} counters loaded into a sketch of {} x {} = {}", counters.size(),
               options_.num_hashes, options_.width, num_counters());
  for (int64_t i = 0; i < num_counters(); ++i) {
    counters_[i].store(counters[i], std::memory_order_relaxed);
  }
}

}  // namespace genrec
