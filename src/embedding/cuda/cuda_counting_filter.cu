// Recording a batch takes two kernels: the occurrences are summed per key in a scratch hash
// set (open addressing on the key, one count per distinct key), then one thread per distinct
// key applies its sightings at once. Sequential conservative updates of one key from estimate
// e raise every counter to at least e + 1, then e + 2, ...: c of them leave each counter at
// max(counter, min(e + c, 255)), which the thread writes with a CAS on the counter's word.
// Per-occurrence CAS loops would not count exactly: two duplicates that read the same minimum
// would each see the other's raise as their own and one sighting would be lost.
#include "core/cuda/cuda_check.h"  // first: it configures fmt for nvcc

#include "embedding/cuda/cuda_counting_filter.h"

#include <algorithm>
#include <bit>

#include "core/cuda/caching_allocator.h"
#include "embedding/dynamic_table.h"

namespace genrec::cuda {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, 1 << 20));
}

__device__ __forceinline__ int64_t first_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// The scratch set of a batch: entries [0, mask] by key hash, entry mask + 1 for kEmptyKey (which
// marks the free entries); counts[e] = 0 marks an unused entry.
struct KeyCounts {
  unsigned long long* keys = nullptr;
  uint32_t* counts = nullptr;
  uint64_t mask = 0;
};

__global__ void __launch_bounds__(kThreads)
    count_kernel(const uint64_t* keys, int64_t n, const uint8_t* candidates, KeyCounts set) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    if (candidates != nullptr && candidates[i] == 0) continue;
    const uint64_t key = keys[i];
    uint64_t e = set.mask + 1;
    if (key != kEmptyKey) {
      for (e = mix64(key) & set.mask;; e = (e + 1) & set.mask) {
        const unsigned long long old = atomicCAS(set.keys + e, kEmptyKey, key);
        if (old == kEmptyKey || old == key) break;
      }
    }
    atomicAdd(set.counts + e, 1u);
  }
}

// Raises counter c to at least `target`; a concurrent raise of another counter of the word makes
// the CAS retry, a concurrent raise of this one past target ends it.
__device__ __forceinline__ void raise_counter(const CountingFilterView& f, uint64_t c,
                                              uint32_t target) {
  uint32_t* word = f.words + c / 4;
  const int shift = static_cast<int>(8 * (c % 4));
  uint32_t old = ::cuda::atomic_ref<uint32_t, ::cuda::thread_scope_device>(*word).load(
      ::cuda::memory_order_relaxed);
  while (((old >> shift) & 0xFF) < target) {
    const uint32_t seen = atomicCAS(word, old, (old & ~(0xFFu << shift)) | (target << shift));
    if (seen == old) return;
    old = seen;
  }
}

// until_admitted: a key stops counting at the sighting that admits it (see the header).
__global__ void __launch_bounds__(kThreads)
    apply_kernel(CountingFilterView f, KeyCounts set, bool until_admitted) {
  const int64_t entries = static_cast<int64_t>(set.mask) + 2;
  for (int64_t e = first_index(); e < entries; e += grid_stride()) {
    const uint32_t count = set.counts[e];
    if (count == 0) continue;
    const uint64_t key = set.keys[e];
    uint64_t c[16];
    uint32_t current = 255;
    for (int r = 0; r < f.num_hashes; ++r) {
      c[r] = count_min_index(key, r, f.mask, f.seed);
      current = min(current, filter_counter(f, c[r]));
    }
    if (current == 255) continue;
    uint32_t sightings = count;
    if (until_admitted) {
      const uint32_t k = static_cast<uint32_t>(f.threshold);
      sightings = min(sightings, k > current ? k - current : 1u);
    }
    const uint32_t target = current + min(sightings, 255u - current);  // saturates, no wrap
    for (int r = 0; r < f.num_hashes; ++r) raise_counter(f, c[r], target);
  }
}

__global__ void __launch_bounds__(kThreads)
    estimate_kernel(CountingFilterView f, const uint64_t* keys, int64_t n, uint32_t* out) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) out[i] = filter_estimate(f, keys[i]);
}

__global__ void __launch_bounds__(kThreads) decay_kernel(uint32_t* words, int64_t n) {
  for (int64_t i = first_index(); i < n; i += grid_stride())
    words[i] = (words[i] >> 1) & 0x7F7F7F7Fu;
}

}  // namespace

CudaCountingFilter::CudaCountingFilter(const AdmissionOptions& options)
    : options_(checked_admission_options(options)) {
  view_.mask = static_cast<uint64_t>(options_.width) - 1;
  view_.seed = options_.seed;
  view_.num_hashes = options_.num_hashes;
  view_.threshold = options_.threshold;
  const size_t bytes = sizeof(uint32_t) * num_words();
  const cudaError_t err = cudaMalloc(reinterpret_cast<void**>(&view_.words), bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();  // not sticky: a caller that catches this must not see it again
    view_.words = nullptr;
    fail("CUDA counting filter: cannot allocate {} bytes of device memory for {} x {} counters: {}",
         bytes, options_.num_hashes, options_.width, cudaGetErrorString(err));
  }
  try {
    GENREC_CUDA_CHECK(cudaMemset(view_.words, 0, bytes));
  } catch (...) {
    cudaFree(view_.words);
    throw;
  }
}

CudaCountingFilter::~CudaCountingFilter() {
  if (view_.words != nullptr) cudaFree(view_.words);
}

void CudaCountingFilter::launch_record(const uint64_t* keys, int64_t n, const uint8_t* candidates,
                                       bool until_admitted, cudaStream_t stream) {
  GENREC_CHECK(n >= 0 && n < int64_t{0xFFFFFFFF},
               "CUDA counting filter record: batch size {} outside [0, 2^32 - 1)", n);
  if (n == 0 || options_.threshold == 1) return;
  GENREC_CHECK(keys != nullptr, "CUDA counting filter record: null keys");
  // At most half full, so that probes stay short.
  const int64_t entries = static_cast<int64_t>(std::bit_ceil(static_cast<uint64_t>(2 * n)));
  DeviceBuffer<unsigned long long> set_keys(entries + 1, stream);
  DeviceBuffer<uint32_t> set_counts(entries + 1, stream);
  GENREC_CUDA_CHECK(cudaMemsetAsync(set_keys.data(), 0xFF, set_keys.bytes(), stream));
  GENREC_CUDA_CHECK(cudaMemsetAsync(set_counts.data(), 0, set_counts.bytes(), stream));
  const KeyCounts set{set_keys.data(), set_counts.data(), static_cast<uint64_t>(entries - 1)};
  count_kernel<<<blocks_for(n), kThreads, 0, stream>>>(keys, n, candidates, set);
  GENREC_CUDA_LAUNCH_CHECK("counting filter count");
  apply_kernel<<<blocks_for(entries + 1), kThreads, 0, stream>>>(view_, set, until_admitted);
  GENREC_CUDA_LAUNCH_CHECK("counting filter record");
}

void CudaCountingFilter::record(const uint64_t* keys, int64_t n, cudaStream_t stream) {
  launch_record(keys, n, nullptr, false, stream);
}

void CudaCountingFilter::record_until_admitted(const uint64_t* keys, int64_t n,
                                               const uint8_t* candidates, cudaStream_t stream) {
  GENREC_CHECK(n == 0 || candidates != nullptr,
               "CUDA counting filter record_until_admitted: null candidates");
  launch_record(keys, n, candidates, true, stream);
}

void CudaCountingFilter::estimate(const uint64_t* keys, int64_t n, uint32_t* out,
                                  cudaStream_t stream) const {
  GENREC_CHECK(n >= 0, "CUDA counting filter estimate: negative batch size {}", n);
  if (n == 0) return;
  GENREC_CHECK(keys != nullptr && out != nullptr,
               "CUDA counting filter estimate: null keys or output");
  estimate_kernel<<<blocks_for(n), kThreads, 0, stream>>>(view_, keys, n, out);
  GENREC_CUDA_LAUNCH_CHECK("counting filter estimate");
}

void CudaCountingFilter::decay(cudaStream_t stream) {
  decay_kernel<<<blocks_for(num_words()), kThreads, 0, stream>>>(view_.words, num_words());
  GENREC_CUDA_LAUNCH_CHECK("counting filter decay");
}

void CudaCountingFilter::clear(cudaStream_t stream) {
  GENREC_CUDA_CHECK(cudaMemsetAsync(view_.words, 0, sizeof(uint32_t) * num_words(), stream));
}

std::vector<uint8_t> CudaCountingFilter::counters(cudaStream_t stream) const {
  std::vector<uint8_t> out(num_counters());
  GENREC_CUDA_CHECK(
      cudaMemcpyAsync(out.data(), view_.words, out.size(), cudaMemcpyDeviceToHost, stream));
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
  return out;
}

void CudaCountingFilter::load_counters(const std::vector<uint8_t>& counters, cudaStream_t stream) {
  GENREC_CHECK(static_cast<int64_t>(counters.size()) == num_counters(),
               "CUDA counting filter: {} counters loaded into a sketch of {} x {} = {}",
               counters.size(), options_.num_hashes, options_.width, num_counters());
  clear(stream);  // the padding bytes of the last word stay zero
  GENREC_CUDA_CHECK(cudaMemcpyAsync(view_.words, counters.data(), counters.size(),
                                    cudaMemcpyHostToDevice, stream));
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace genrec::cuda
