// Core types: Tensor views, Jagged validation, the thread pool, and the Philox stream (checked
// against the Random123 known-answer vectors, so the CPU and CUDA streams share one definition).
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>

#include "core/error.h"
#include "core/jagged.h"
#include "core/philox.h"
#include "core/tensor.h"
#include "core/thread_pool.h"

namespace genrec {
namespace {

TEST(CoreTensor, ViewsShareStorageAndCheckBounds) {
  Tensor t = Tensor::zeros({4, 3}, DType::kF32);
  Tensor rows = t.rows(1, 3);
  EXPECT_EQ(rows.shape(), (std::vector<int64_t>{2, 3}));
  rows.data<float>()[0] = 5.0f;
  EXPECT_EQ(t.data<float>()[3], 5.0f);
  EXPECT_THROW(t.rows(2, 5), Error);
  EXPECT_THROW(t.view(10, {3}), Error);
  EXPECT_THROW(t.data<int64_t>(), Error);
  EXPECT_EQ(t.reshape({12}).numel(), 12);
  EXPECT_EQ(t.describe(), "f32[4,3]@cpu");
  Tensor copy = t.to(Device::kCPU);
  copy.data<float>()[3] = 1.0f;
  EXPECT_EQ(t.data<float>()[3], 5.0f);
}

TEST(CoreTensor, CudaDeviceNeedsCudaBuild) {
  if (cuda_available()) GTEST_SKIP() << "CUDA present";
#ifndef GENREC_WITH_CUDA
  EXPECT_THROW(Tensor::empty({2}, DType::kF32, Device::kCUDA), Error);
#endif
}

TEST(CoreJagged, ValidatesOffsets) {
  Jagged j = Jagged::from_lengths({2, 0, 3}, {4}, DType::kF32);
  EXPECT_EQ(j.batch_size(), 3);
  EXPECT_EQ(j.total(), 5);
  EXPECT_EQ(j.length(1), 0);
  EXPECT_EQ(j.max_length(), 3);
  EXPECT_EQ(j.values.shape(), (std::vector<int64_t>{5, 4}));
  int64_t bad_start[] = {1, 2};
  EXPECT_THROW(validate_offsets(bad_start, 1, 2), Error);
  int64_t decreasing[] = {0, 3, 2};
  EXPECT_THROW(validate_offsets(decreasing, 2, 2), Error);
  int64_t short_end[] = {0, 1, 2};
  EXPECT_THROW(validate_offsets(short_end, 2, 3), Error);
  EXPECT_THROW(Jagged::from_lengths({1, -1}, {}, DType::kF32), Error);
}

TEST(CoreThreadPool, CoversTheRangeOnceAndPropagatesErrors) {
  ThreadPool pool(3);
  std::vector<std::atomic<int>> hits(1000);
  pool.parallel_for(1000, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) hits[i]++;
  });
  for (auto& h : hits) EXPECT_EQ(h.load(), 1);
  EXPECT_THROW(pool.parallel_for(10,
                                 [](int64_t b, int64_t, int) {
                                   if (b > 0) fail("chunk failed");
                                 }),
               Error);
  // Nested calls run inline instead of deadlocking.
  std::atomic<int> inner{0};
  pool.parallel_for(4, [&](int64_t, int64_t, int) {
    pool.parallel_for(5, [&](int64_t b, int64_t e, int) { inner += static_cast<int>(e - b); });
  });
  EXPECT_EQ(inner.load(), 5 * std::min(4, pool.num_threads()));
}

TEST(CorePhilox, MatchesRandom123KnownAnswers) {
  Philox4 zero = philox4x32({0, 0, 0, 0}, 0, 0);
  EXPECT_EQ(zero.x, 0x6627e8d5u);
  EXPECT_EQ(zero.y, 0xe169c58du);
  EXPECT_EQ(zero.z, 0xbc57ac4cu);
  EXPECT_EQ(zero.w, 0x9b00dbd8u);
  Philox4 ones = philox4x32({~0u, ~0u, ~0u, ~0u}, ~0u, ~0u);
  EXPECT_EQ(ones.x, 0x408f276du);
  EXPECT_EQ(ones.y, 0x41c83b0eu);
  EXPECT_EQ(ones.z, 0xa20bc7c6u);
  EXPECT_EQ(ones.w, 0x6d5451fdu);
}

TEST(CorePhilox, StreamsAreIndexableAndWellDistributed) {
  Philox a(42, 7);
  for (uint64_t i = 0; i < 10; ++i) EXPECT_EQ(a.next_u32(), philox_u32(42, 7, i));
  EXPECT_NE(philox_u32(42, 7, 0), philox_u32(42, 8, 0));
  EXPECT_NE(philox_u32(42, 7, 0), philox_u32(43, 7, 0));
  Philox r(1);
  double sum = 0, sq = 0;
  const int n = 100000;
  for (int i = 0; i < n; ++i) {
    float x = r.normal();
    sum += x, sq += x * x;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.02);
  EXPECT_NEAR(sq / n, 1.0, 0.02);
  int64_t counts[10] = {};
  for (int i = 0; i < n; ++i) counts[r.below(10)]++;
  for (int64_t c : counts) EXPECT_NEAR(c, n / 10, n / 100);
}

}  // namespace
}  // namespace genrec
