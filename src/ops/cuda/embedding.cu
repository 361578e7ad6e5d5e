// Embedding gather (one warp per row) and scatter-add by sort-then-reduce: keys = ids (an
// out-of-range id becomes the sentinel num_rows), values = positions; cub::DeviceRadixSort
// sorts the pairs stably over only the bits num_rows needs, and one warp per run of equal ids
// adds the run's rows to the table row in position order (deterministic, no atomics).
#include "ops/cuda/kernel_util.cuh"  // first: it configures fmt for nvcc

#include <cub/device/device_radix_sort.cuh>

#include <bit>
#include <limits>

#include "core/cuda/caching_allocator.h"
#include "ops/cuda/embedding.h"

namespace genrec::cuda {
namespace {

using detail::from_float;
using detail::to_float;

__device__ __forceinline__ int64_t warp_index() {
  return static_cast<int64_t>(blockIdx.x) * detail::kWarpsPerBlock + threadIdx.x / 32;
}

template <typename T>
__global__ void gather_kernel(T* out, const float* table, const int64_t* ids, int64_t n, int64_t D,
                              int64_t num_rows) {
  const int64_t i = warp_index();
  const int lane = threadIdx.x % 32;
  if (i >= n) return;
  const int64_t id = ids[i];
  T* o = out + i * D;
  if (id < 0 || id >= num_rows) {
    for (int64_t c = lane; c < D; c += 32) o[c] = from_float<T>(0.0f);
    return;
  }
  const float* row = table + id * D;
  for (int64_t c = lane; c < D; c += 32) o[c] = from_float<T>(row[c]);
}

__global__ void make_keys_kernel(uint64_t* keys, int32_t* positions, const int64_t* ids, int64_t n,
                                 int64_t num_rows) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const int64_t id = ids[i];
    keys[i] = static_cast<uint64_t>(id >= 0 && id < num_rows ? id : num_rows);
    positions[i] = static_cast<int32_t>(i);
  }
}

// Warp j starts a run when sorted key j differs from key j - 1; it then sums the run.
template <typename T>
__global__ void reduce_runs_kernel(float* d_table, const T* d_out, const uint64_t* keys,
                                   const int32_t* positions, int64_t n, int64_t D,
                                   uint64_t sentinel) {
  const int64_t j = warp_index();
  const int lane = threadIdx.x % 32;
  if (j >= n) return;
  const uint64_t key = keys[j];
  if (key == sentinel || (j > 0 && keys[j - 1] == key)) return;
  int64_t end = j + 1;
  while (end < n && keys[end] == key) ++end;
  float* dst = d_table + static_cast<int64_t>(key) * D;
  for (int64_t c = lane; c < D; c += 32) {
    float acc = dst[c];
#pragma unroll 4
    for (int64_t k = j; k < end; ++k)
      acc += to_float(d_out[static_cast<int64_t>(positions[k]) * D + c]);
    dst[c] = acc;
  }
}

__global__ void find_bad_id_kernel(unsigned long long* first_bad, const int64_t* ids, int64_t n,
                                   int64_t num_rows) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const int64_t id = ids[i];
    if (id < 0 || id >= num_rows) atomicMin(first_bad, static_cast<unsigned long long>(i));
  }
}

unsigned warp_blocks(int64_t warps) {
  return static_cast<unsigned>(detail::ceil_div(warps, detail::kWarpsPerBlock));
}

}  // namespace

template <typename T>
void embedding_gather(T* out, const float* table, const int64_t* ids, int64_t n, int64_t D,
                      int64_t num_rows, cudaStream_t stream) {
  GENREC_CHECK(n >= 0 && D >= 0 && num_rows >= 0, "embedding_gather: bad sizes n={} D={} rows={}",
               n, D, num_rows);
  if (n == 0 || D == 0) return;
  gather_kernel<<<warp_blocks(n), detail::kThreads, 0, stream>>>(out, table, ids, n, D, num_rows);
  GENREC_CUDA_LAUNCH_CHECK("embedding_gather");
}

template <typename T>
void embedding_scatter_add(float* d_table, const T* d_out, const int64_t* ids, int64_t n, int64_t D,
                           int64_t num_rows, cudaStream_t stream) {
  GENREC_CHECK(n >= 0 && D >= 0 && num_rows >= 0,
               "embedding_scatter_add: bad sizes n={} D={} rows={}", n, D, num_rows);
  GENREC_CHECK(n <= std::numeric_limits<int32_t>::max(),
               "embedding_scatter_add: {} ids exceed the 2^31 a single sort handles", n);
  if (n == 0 || D == 0 || num_rows == 0) return;
  DeviceBuffer<uint64_t> keys_in(n, stream), keys_out(n, stream);
  DeviceBuffer<int32_t> pos_in(n, stream), pos_out(n, stream);
  make_keys_kernel<<<detail::grid_for(n, detail::kThreads), detail::kThreads, 0, stream>>>(
      keys_in.data(), pos_in.data(), ids, n, num_rows);
  GENREC_CUDA_LAUNCH_CHECK("embedding_scatter_add (keys)");

  // Keys lie in [0, num_rows]: sorting bit_width(num_rows) bits orders them all.
  const int end_bit = std::bit_width(static_cast<uint64_t>(num_rows));
  const int items = static_cast<int>(n);
  size_t temp_bytes = 0;
  GENREC_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in.data(),
                                                    keys_out.data(), pos_in.data(), pos_out.data(),
                                                    items, 0, end_bit, stream));
  DeviceBuffer<uint8_t> temp(static_cast<int64_t>(std::max<size_t>(temp_bytes, 1)), stream);
  GENREC_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data(), temp_bytes, keys_in.data(),
                                                    keys_out.data(), pos_in.data(), pos_out.data(),
                                                    items, 0, end_bit, stream));
  GENREC_CUDA_LAUNCH_CHECK("embedding_scatter_add (radix sort)");

  reduce_runs_kernel<<<warp_blocks(n), detail::kThreads, 0, stream>>>(
      d_table, d_out, keys_out.data(), pos_out.data(), n, D, static_cast<uint64_t>(num_rows));
  GENREC_CUDA_LAUNCH_CHECK("embedding_scatter_add (run sums)");
}

void embedding_check_ids(const int64_t* ids, int64_t n, int64_t num_rows, cudaStream_t stream) {
  if (n <= 0) return;
  constexpr unsigned long long kNone = std::numeric_limits<unsigned long long>::max();
  DeviceBuffer<unsigned long long> first_bad(1, stream);
  GENREC_CUDA_CHECK(cudaMemsetAsync(first_bad.data(), 0xFF, sizeof(kNone), stream));  // = kNone
  find_bad_id_kernel<<<detail::grid_for(n, detail::kThreads), detail::kThreads, 0, stream>>>(
      first_bad.data(), ids, n, num_rows);
  GENREC_CUDA_LAUNCH_CHECK("embedding_check_ids");
  unsigned long long position = kNone;
  GENREC_CUDA_CHECK(cudaMemcpyAsync(&position, first_bad.data(), sizeof(position),
                                    cudaMemcpyDeviceToHost, stream));
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (position == kNone) return;
  int64_t id = 0;
  GENREC_CUDA_CHECK(
      cudaMemcpyAsync(&id, ids + position, sizeof(id), cudaMemcpyDeviceToHost, stream));
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
  fail("embedding id {} (position {}) outside table of {} rows", id, position, num_rows);
}

#define GENREC_INSTANTIATE(T)                                                                    \
  template void embedding_gather<T>(T*, const float*, const int64_t*, int64_t, int64_t, int64_t, \
                                    cudaStream_t);                                               \
  template void embedding_scatter_add<T>(float*, const T*, const int64_t*, int64_t, int64_t,     \
                                         int64_t, cudaStream_t);
GENREC_INSTANTIATE(float)
GENREC_INSTANTIATE(__nv_bfloat16)
#undef GENREC_INSTANTIATE

}  // namespace genrec::cuda
