// CudaCountingFilter: the GPU counterpart of CountingFilter (embedding/admission.h), the same
// count-min sketch (num_hashes x width 8-bit saturating counters, conservative update) with the
// same index function (embedding/count_min_index.h), so the same sightings give the same
// counters. Counters are packed four to a 32-bit word (there is no 8-bit atomicCAS): counter c
// is byte c % 4 of word c / 4, so the words' bytes are the CPU filter's layout.
//
// A batch counts exactly: the occurrences of each key are summed first and one thread raises
// the key's counters by the sum, so duplicates racing on the same counters lose no sighting.
// The order in which different keys of a batch update is unspecified, which matters only for
// keys that share a counter (as for CountingFilter under concurrent records).
//
// Calls queue work on `stream` and are ordered only by it: record on the stream of the table
// that uses the filter (its batches record on theirs), or synchronize between streams.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "embedding/admission.h"
#include "embedding/count_min_index.h"

#if defined(__CUDACC__)
#include <cuda/atomic>
#endif

namespace genrec::cuda {

// What kernels see of a filter (plain values, passed by value).
struct CountingFilterView {
  uint32_t* words = nullptr;  // the counters, 4 per word
  uint64_t mask = 0;          // width - 1
  uint64_t seed = 0;
  int num_hashes = 0;
  int threshold = 1;
};

#if defined(__CUDACC__)
// Counter c (a count_min_index), read once: relaxed, since other threads raise counters while
// kernels read them.
__device__ __forceinline__ uint32_t filter_counter(const CountingFilterView& f, uint64_t c) {
  const uint32_t word = ::cuda::atomic_ref<uint32_t, ::cuda::thread_scope_device>(f.words[c / 4])
                            .load(::cuda::memory_order_relaxed);
  return (word >> (8 * (c % 4))) & 0xFF;
}

// CountingFilter::estimate: the minimum of the key's counters.
__device__ __forceinline__ uint32_t filter_estimate(const CountingFilterView& f, uint64_t key) {
  uint32_t m = 255;
  for (int r = 0; r < f.num_hashes; ++r) {
    m = min(m, filter_counter(f, count_min_index(key, r, f.mask, f.seed)));
  }
  return m;
}
#endif

class CudaCountingFilter {
 public:
  explicit CudaCountingFilter(const AdmissionOptions& options);
  ~CudaCountingFilter();
  CudaCountingFilter(const CudaCountingFilter&) = delete;
  CudaCountingFilter& operator=(const CudaCountingFilter&) = delete;

  int threshold() const { return options_.threshold; }
  const AdmissionOptions& options() const { return options_; }  // width rounded up
  int64_t num_counters() const { return options_.num_hashes * options_.width; }
  const CountingFilterView& view() const { return view_; }

  // One sighting per occurrence of keys[0, n) (device): a key occurring c times ends with the
  // counters of c calls of CountingFilter::record (saturating at 255). As on the CPU, a
  // threshold of 1 records nothing (every key is admitted anyway).
  void record(const uint64_t* keys, int64_t n, cudaStream_t stream);
  // The sightings of an inserting table batch: occurrence i is one when candidates[i] != 0 (its
  // key is absent from the table), counted as DynamicTable counts them, one per occurrence
  // until the key is admitted. So a key with c candidate occurrences and estimate e before the
  // call gets min(c, max(K - e, 1)) sightings, and its estimate afterwards reaches K exactly
  // when the CPU table would have admitted it in that batch. Threshold 1 records nothing.
  void record_until_admitted(const uint64_t* keys, int64_t n, const uint8_t* candidates,
                             cudaStream_t stream);
  // out[i] (device) = the estimated sightings of keys[i], as CountingFilter::estimate.
  void estimate(const uint64_t* keys, int64_t n, uint32_t* out, cudaStream_t stream) const;
  void decay(cudaStream_t stream);  // halves every counter
  void clear(cudaStream_t stream);  // zeroes every counter

  // The counters as CountingFilter::counters lays them out (num_counters bytes); both
  // synchronize `stream`. load_counters checks the size.
  std::vector<uint8_t> counters(cudaStream_t stream = nullptr) const;
  void load_counters(const std::vector<uint8_t>& counters, cudaStream_t stream = nullptr);

 private:
  void launch_record(const uint64_t* keys, int64_t n, const uint8_t* candidates,
                     bool until_admitted, cudaStream_t stream);
  int64_t num_words() const { return (num_counters() + 3) / 4; }

  AdmissionOptions options_;
  CountingFilterView view_;
};

}  // namespace genrec::cuda
