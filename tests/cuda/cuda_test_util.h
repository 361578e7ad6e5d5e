// Shared helpers of the CUDA op tests: device arrays uploaded from host floats (rounded through
// T on the host first, so the CPU reference sees exactly the device's inputs), NaN poisoning,
// downloads back to float, jagged token counts, and the CUDA-vs-CPU tolerances.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../op_test_util.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/cuda_check.h"
#include "core/philox.h"
#include "core/tensor.h"

#define GENREC_REQUIRE_CUDA() \
  if (!::genrec::cuda_available()) GTEST_SKIP() << "no CUDA device"

namespace genrec::test {

// fp32 CUDA op vs the fp32 CPU op on identical inputs: both round every product and partial
// sum to fp32, in different orders (warp trees and cuBLASLt tiles vs sequential loops and
// OpenBLAS blocks). Over the sums of at most a few thousand terms in these tests that gives
// relative L2 differences of order sqrt(K) * 2^-24 ~ 1e-7 to 1e-6; 1e-5 leaves a factor of 10
// or more, while one wrong element of typical size moves the error by ~1/sqrt(n) >> 1e-5.
// Also used for fp32 outputs of bf16 ops whose inputs are identical on both sides (bf16
// values are exact in fp32 and products of two bf16 are exact in fp32).
constexpr double kCudaF32RelTol = 1e-5;

// A bf16 output vs the fp32 CPU op on the same bf16-rounded inputs: rounding a result to bf16
// (8 significant bits) moves it by at most 2^-9 relative, RMS about 2^-9/sqrt(3) = 1.1e-3, and
// a bf16 intermediate that the CPU keeps in fp32 (e.g. the rounded bias of the bf16 linear)
// adds about as much again: measured-by-construction errors of 1e-3 to 3e-3. 1e-2 leaves a
// factor of 3 or more, while a wrong element, a missed term or a wrong scale gives 1e-1 or more.
constexpr double kCudaBf16RelTol = 1e-2;

template <typename T>
constexpr double rel_tol() {
  return std::is_same_v<T, float> ? kCudaF32RelTol : kCudaBf16RelTol;
}

template <typename T>
const char* type_name() {
  return std::is_same_v<T, float> ? "f32" : "bf16";
}

inline float host_float(float x) {
  return x;
}
inline float host_float(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
inline float host_float(__half x) {
  return __half2float(x);
}

template <typename T>
T host_cast(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(x);
  } else {
    return __float2bfloat16_rn(x);
  }
}

// x rounded through T (identity for float): what the device holds after an upload.
template <typename T>
std::vector<float> round_through(std::vector<float> x) {
  for (auto& v : x) v = host_float(host_cast<T>(v));
  return x;
}

inline uint16_t bits_of(__nv_bfloat16 x) {
  uint16_t b;
  std::memcpy(&b, &x, sizeof(b));
  return b;
}

// A device array of T; uploads convert from float on the host (round to nearest even), raw
// uploads and downloads copy T as it is.
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(int64_t n) : buffer_(n) {}
  static DeviceArray from(const std::vector<float>& host) {
    DeviceArray a(static_cast<int64_t>(host.size()));
    a.upload(host);
    return a;
  }
  // A device copy of `host` as it is, no conversion: ids, offsets, or values already of type T
  // whose bits must arrive unchanged.
  static DeviceArray from_raw(const std::vector<T>& host) {
    DeviceArray a(static_cast<int64_t>(host.size()));
    a.upload_raw(host);
    return a;
  }
  void upload(const std::vector<float>& host) {
    EXPECT_EQ(static_cast<int64_t>(host.size()), size());
    std::vector<T> staged(host.size());
    for (size_t i = 0; i < host.size(); ++i) staged[i] = host_cast<T>(host[i]);
    copy_in(staged);
  }
  void upload_raw(const std::vector<T>& host) {
    EXPECT_EQ(static_cast<int64_t>(host.size()), size());
    copy_in(host);
  }
  std::vector<T> download_raw() const {
    std::vector<T> host(static_cast<size_t>(size()));
    GENREC_CUDA_CHECK(cudaDeviceSynchronize());
    if (!host.empty()) {
      GENREC_CUDA_CHECK(
          cudaMemcpy(host.data(), get(), host.size() * sizeof(T), cudaMemcpyDeviceToHost));
    }
    return host;
  }
  std::vector<float> download() const {
    std::vector<T> raw = download_raw();
    std::vector<float> host(raw.size());
    for (size_t i = 0; i < raw.size(); ++i) host[i] = host_float(raw[i]);
    return host;
  }
  // Every byte 0xFF: NaN in fp32 and bf16, so an element the op fails to write shows up.
  void poison() {
    if (size() > 0) GENREC_CUDA_CHECK(cudaMemset(get(), 0xFF, buffer_.bytes()));
  }
  T* get() const { return buffer_.data(); }
  int64_t size() const { return buffer_.size(); }

 private:
  void copy_in(const std::vector<T>& host) {
    if (!host.empty()) {
      GENREC_CUDA_CHECK(
          cudaMemcpy(get(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    }
  }

  cuda::DeviceBuffer<T> buffer_;
};

template <typename T>
DeviceArray<T> upload(const std::vector<float>& host) {
  return DeviceArray<T>::from(host);
}

template <typename T>
DeviceArray<T> upload_raw(const std::vector<T>& host) {
  return DeviceArray<T>::from_raw(host);
}

// n poisoned elements (at least one, so empty batches still get a valid pointer): outputs a
// call must write.
template <typename T>
DeviceArray<T> poisoned(int64_t n) {
  DeviceArray<T> a(std::max<int64_t>(n, 1));
  a.poison();
  return a;
}

// Sequence lengths of a jagged batch: B lengths in [0, max_len] (zeros included), at least
// one token in all.
inline std::vector<int64_t> jagged_lengths(int64_t B, int64_t max_len, uint64_t seed) {
  Philox rng(seed);
  std::vector<int64_t> lengths(B);
  int64_t total = 0;
  for (auto& l : lengths) total += l = static_cast<int64_t>(rng.below(max_len + 1));
  if (total == 0) lengths[0] = 1;
  return lengths;
}

inline int64_t total_tokens(const std::vector<int64_t>& lengths) {
  int64_t t = 0;
  for (int64_t l : lengths) t += l;
  return t;
}

// The batch sizes every jagged test runs.
inline const std::vector<int64_t>& batch_sizes() {
  static const std::vector<int64_t> sizes = {1, 7, 64, 256};
  return sizes;
}

}  // namespace genrec::test
