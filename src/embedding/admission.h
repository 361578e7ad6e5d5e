// Admission of new ids: a count-min sketch with 8-bit saturating counters and conservative
// update counts sightings, and an id is admitted on the sighting where its estimate reaches
// the threshold K. Count-min never under-counts, so an id seen K times is always admitted; a
// hash collision can only admit an id early, never late.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

namespace genrec {

struct AdmissionOptions {
  int threshold = 1;        // K: sightings before admission, 1..255 (1 = admit every id)
  int num_hashes = 4;       // rows of the sketch
  int64_t width = 1 << 20;  // counters per row (rounded up to a power of two)
  uint64_t seed = 0;
};

class CountingFilter {
 public:
  explicit CountingFilter(const AdmissionOptions& options);

  // Records one sighting of `key`; returns true when the key is admitted (its estimated count,
  // this sighting included, is at least the threshold). Thread-safe.
  bool record(uint64_t key);
  // The estimated number of sightings (saturates at 255). Thread-safe.
  uint32_t estimate(uint64_t key) const;
  // Halves every counter (ages old sightings); clear() zeroes them. Not concurrent with record.
  void decay();
  void clear();

  int threshold() const { return options_.threshold; }
  const AdmissionOptions& options() const { return options_; }

 private:
  uint64_t index(uint64_t key, int row) const;

  AdmissionOptions options_;
  uint64_t mask_ = 0;
  std::unique_ptr<std::atomic<uint8_t>[]> counters_;  // num_hashes x width
};

}  // namespace genrec
