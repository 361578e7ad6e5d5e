// Helpers shared by the CUDA benchmarks: random device arrays and CUDA-event timing.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "core/cuda/caching_allocator.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/stream.h"
#include "ops/cuda/convert.h"

namespace genrec::bench {

inline int g_iters = 20;  // timed runs per measurement (--iters)

// Device array of n values uniform in [-1, 1) (a cheap LCG on the host, converted on device).
template <typename T>
cuda::DeviceBuffer<T> random_array(int64_t n, uint64_t seed, cudaStream_t stream) {
  std::vector<float> host(static_cast<size_t>(n));
  uint64_t s = seed * 6364136223846793005ull + 1442695040888963407ull;
  for (auto& v : host) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    v = static_cast<float>(static_cast<int64_t>(s >> 40) - (int64_t{1} << 23)) / 8388608.0f;
  }
  cuda::DeviceBuffer<float> staged(n, stream);
  GENREC_CUDA_CHECK(cudaMemcpyAsync(staged.data(), host.data(), host.size() * sizeof(float),
                                    cudaMemcpyHostToDevice, stream));
  cuda::DeviceBuffer<T> out(n, stream);
  cuda::convert(out.data(), staged.data(), n, stream);
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
  return out;
}

// Median over g_iters runs (after 3 warm-up runs), each timed on its own pair of events.
inline double median_ms(const std::function<void()>& run, cudaStream_t stream) {
  for (int i = 0; i < 3; ++i) run();
  std::vector<double> times;
  cuda::Event start(true), stop(true);
  for (int i = 0; i < g_iters; ++i) {
    start.record(stream);
    run();
    stop.record(stream);
    stop.synchronize();
    times.push_back(stop.elapsed_ms_since(start));
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace genrec::bench
