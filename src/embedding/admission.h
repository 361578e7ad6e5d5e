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

// The options checked (each field in range, else an Error naming it) with width rounded up to a
// power of two: what the CPU and the CUDA filter are built from.
AdmissionOptions checked_admission_options(const AdmissionOptions& options);

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
  // The counters, num_hashes x width row-major as count_min_index addresses them: for
  // checkpoints, and the bytes a CudaCountingFilter holds after the same sightings (exactly so
  // when no two keys share a counter: conservative update depends on the order of colliding
  // keys). load_counters replaces them (the size must match). Not concurrent with record.
  std::vector<uint8_t> counters() const;
  void load_counters(const std::vector<uint8_t>& counters);

  int threshold() const { return options_.threshold; }
  const AdmissionOptions& options() const { return options_; }  // width rounded up
  int64_t num_counters() const { return options_.num_hashes * options_.width; }

 private:
  AdmissionOptions options_;
  uint64_t mask_ = 0;
  std::unique_ptr<std::atomic<uint8_t>[]> counters_;  // num_hashes x width
};

}  // namespace genrec
