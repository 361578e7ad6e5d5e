// The CUDA device runtime: device queries, streams and events, the caching allocator behind
// Tensor, and the pinned host pool.
#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <vector>

#include "core/cuda/caching_allocator.h"
#include "core/cuda/device.h"
#include "core/cuda/pinned_pool.h"
#include "core/cuda/stream.h"
#include "core/error.h"
#include "core/tensor.h"
#include "cuda_test_util.h"

namespace genrec {
namespace {

using cuda::CachingAllocator;

TEST(CudaDevice, CountSummaryAndGuard) {
  GENREC_REQUIRE_CUDA();
  ASSERT_GT(cuda::device_count(), 0);
  const std::string summary = cuda::device_summary(0);
  EXPECT_NE(summary.find("cuda:0"), std::string::npos) << summary;
  EXPECT_NE(summary.find("sm_"), std::string::npos) << summary;
  {
    cuda::DeviceGuard guard(0);
    EXPECT_EQ(cuda::current_device(), 0);
  }
  EXPECT_THROW(cuda::set_device(cuda::device_count()), Error);
  cuda::synchronize_device();
}

TEST(CudaStream, EventsOrderAndTimeWork) {
  GENREC_REQUIRE_CUDA();
  cuda::Stream stream;
  cuda::Event start(true), stop(true);
  test::DeviceArray<float> buf(1 << 20);
  start.record(stream);
  GENREC_CUDA_CHECK(cudaMemsetAsync(buf.get(), 0, buf.size() * sizeof(float), stream));
  stop.record(stream);
  stop.synchronize();
  EXPECT_TRUE(stop.query());
  EXPECT_TRUE(stream.query());
  EXPECT_GE(stop.elapsed_ms_since(start), 0.0f);

  // A second stream waits on an event of the first.
  cuda::Stream other(cudaStreamNonBlocking);
  cuda::Event done;
  std::vector<float> ones(buf.size(), 1.0f);
  GENREC_CUDA_CHECK(cudaMemcpyAsync(buf.get(), ones.data(), ones.size() * sizeof(float),
                                    cudaMemcpyHostToDevice, stream));
  done.record(stream);
  done.block(other);
  std::vector<float> back(buf.size(), 0.0f);
  GENREC_CUDA_CHECK(cudaMemcpyAsync(back.data(), buf.get(), back.size() * sizeof(float),
                                    cudaMemcpyDeviceToHost, other));
  other.synchronize();
  EXPECT_EQ(back, ones);
}

TEST(CudaCachingAllocator, SizeClasses) {
  EXPECT_EQ(CachingAllocator::size_class(0), 512u);
  EXPECT_EQ(CachingAllocator::size_class(1), 512u);
  EXPECT_EQ(CachingAllocator::size_class(512), 512u);
  EXPECT_EQ(CachingAllocator::size_class(513), 1024u);
  EXPECT_EQ(CachingAllocator::size_class(1 << 20), size_t{1} << 20);
  EXPECT_EQ(CachingAllocator::size_class((1 << 20) + 1), size_t{5} << 18);  // 1.25 MiB
  EXPECT_EQ(CachingAllocator::size_class(size_t{3} << 20), size_t{3} << 20);
  EXPECT_EQ(CachingAllocator::size_class((size_t{3} << 20) + 1), size_t{7} << 19);  // 3.5 MiB
  EXPECT_EQ(CachingAllocator::size_class((size_t{1} << 30) + 1), size_t{5} << 28);
  for (size_t bytes : {size_t{1000}, size_t{1} << 21, (size_t{1} << 21) + 12345, size_t{7} << 27}) {
    const size_t c = CachingAllocator::size_class(bytes);
    EXPECT_GE(c, bytes);
    EXPECT_LT(static_cast<double>(c), 1.25 * static_cast<double>(bytes) + 512);
  }
}

TEST(CudaCachingAllocator, ReusesFreedBlocksWithoutCudaMalloc) {
  GENREC_REQUIRE_CUDA();
  auto& alloc = CachingAllocator::global();
  const auto s0 = alloc.stats();
  void* a = alloc.allocate(1000);
  const auto s1 = alloc.stats();
  EXPECT_EQ(s1.bytes_in_use, s0.bytes_in_use + 1024);
  EXPECT_EQ(s1.num_allocs, s0.num_allocs + 1);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 256, 0u);
  alloc.free(a);
  EXPECT_EQ(alloc.stats().bytes_in_use, s0.bytes_in_use);
  // The same size class comes back from the free list.
  void* b = alloc.allocate(900);
  EXPECT_EQ(b, a);
  const auto s2 = alloc.stats();
  EXPECT_EQ(s2.num_cuda_mallocs, s1.num_cuda_mallocs);
  EXPECT_EQ(s2.num_cache_hits, s1.num_cache_hits + 1);
  alloc.free(b);

  // A warm loop of mixed sizes never calls cudaMalloc again.
  const std::vector<size_t> sizes = {100, 4096, 70000, (1 << 20) + 5, 3 << 20, 12345678};
  auto step = [&] {
    std::vector<void*> ptrs;
    for (size_t s : sizes) ptrs.push_back(alloc.allocate(s));
    for (void* p : ptrs) alloc.free(p);
  };
  step();
  const auto warm = alloc.stats();
  for (int i = 0; i < 50; ++i) step();
  const auto after = alloc.stats();
  EXPECT_EQ(after.num_cuda_mallocs, warm.num_cuda_mallocs);
  EXPECT_EQ(after.num_cache_hits, warm.num_cache_hits + 50 * static_cast<int64_t>(sizes.size()));
  EXPECT_EQ(after.bytes_reserved, warm.bytes_reserved);
}

TEST(CudaCachingAllocator, BlocksAreReusedOnlyOnTheirStream) {
  GENREC_REQUIRE_CUDA();
  auto& alloc = CachingAllocator::global();
  cuda::Stream s1, s2;
  void* a = alloc.allocate(5000, s1);
  alloc.free(a);
  const auto before = alloc.stats();
  void* b = alloc.allocate(5000, s2);
  EXPECT_NE(b, a);
  EXPECT_EQ(alloc.stats().num_cuda_mallocs, before.num_cuda_mallocs + 1);
  void* c = alloc.allocate(5000, s1);
  EXPECT_EQ(c, a);
  alloc.free(b);
  alloc.free(c);
}

TEST(CudaCachingAllocator, PeakStatisticsAndRelease) {
  GENREC_REQUIRE_CUDA();
  auto& alloc = CachingAllocator::global();
  alloc.reset_peak();
  const auto s0 = alloc.stats();
  EXPECT_EQ(s0.peak_bytes_in_use, s0.bytes_in_use);
  void* a = alloc.allocate(size_t{2} << 20);
  void* b = alloc.allocate(size_t{3} << 20);
  alloc.free(a);
  void* c = alloc.allocate(4096);
  const auto s1 = alloc.stats();
  EXPECT_EQ(s1.peak_bytes_in_use, s0.bytes_in_use + (size_t{5} << 20));
  EXPECT_EQ(s1.bytes_in_use, s0.bytes_in_use + (size_t{3} << 20) + 4096);
  EXPECT_GE(s1.bytes_reserved, s1.bytes_in_use);
  alloc.free(b);
  alloc.free(c);

  // Everything cached goes back to the driver; blocks in use stay reserved.
  void* kept = alloc.allocate(8192);
  alloc.release_cached();
  const auto s2 = alloc.stats();
  EXPECT_EQ(s2.bytes_reserved, s2.bytes_in_use);
  EXPECT_GT(s2.num_cuda_frees, s1.num_cuda_frees);
  void* again = alloc.allocate(size_t{2} << 20);  // needs a fresh cudaMalloc
  EXPECT_EQ(alloc.stats().num_cuda_mallocs, s2.num_cuda_mallocs + 1);
  alloc.free(again);
  alloc.free(kept);
  alloc.free(nullptr);
  int not_ours = 0;
  EXPECT_THROW(alloc.free(&not_ours), Error);
}

TEST(CudaCachingAllocator, BacksTensorStorage) {
  GENREC_REQUIRE_CUDA();
  auto& alloc = CachingAllocator::global();
  const auto s0 = alloc.stats();
  std::vector<float> host(1000);
  std::iota(host.begin(), host.end(), 0.5f);
  Tensor cpu = Tensor::empty({10, 100}, DType::kF32);
  std::memcpy(cpu.data<float>(), host.data(), host.size() * sizeof(float));
  {
    Tensor dev = cpu.to(Device::kCUDA);
    EXPECT_EQ(alloc.stats().bytes_in_use, s0.bytes_in_use + 4096);
    Tensor back = dev.to(Device::kCPU);
    EXPECT_EQ(0, std::memcmp(back.data<float>(), host.data(), host.size() * sizeof(float)));
    Tensor zeros = Tensor::zeros({10, 100}, DType::kF32, Device::kCUDA);
    Tensor zback = zeros.to(Device::kCPU);
    for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(zback.data<float>()[i], 0.0f);
  }
  EXPECT_EQ(alloc.stats().bytes_in_use, s0.bytes_in_use);
  // A second tensor of the same size reuses the block.
  const auto s1 = alloc.stats();
  Tensor dev2 = cpu.to(Device::kCUDA);
  EXPECT_EQ(alloc.stats().num_cuda_mallocs, s1.num_cuda_mallocs);
}

TEST(CudaPinnedPool, ReusesBuffersAndStagesCopies) {
  GENREC_REQUIRE_CUDA();
  EXPECT_EQ(cuda::PinnedPool::size_class(1), size_t{64} << 10);
  EXPECT_EQ(cuda::PinnedPool::size_class((size_t{64} << 10) + 1), size_t{128} << 10);
  EXPECT_EQ(cuda::PinnedPool::size_class(size_t{5} << 20), size_t{8} << 20);

  cuda::PinnedPool pool;
  void* first = nullptr;
  {
    cuda::PinnedBuffer a = pool.acquire(100);
    ASSERT_TRUE(a);
    EXPECT_EQ(a.size(), size_t{64} << 10);
    first = a.data();
    const auto s = pool.stats();
    EXPECT_EQ(s.num_host_allocs, 1);
    EXPECT_EQ(s.bytes_in_use, size_t{64} << 10);
  }
  EXPECT_EQ(pool.stats().bytes_in_use, 0u);
  {
    cuda::PinnedBuffer b = pool.acquire(60000);
    EXPECT_EQ(b.data(), first);
    EXPECT_EQ(pool.stats().num_cache_hits, 1);
    cuda::PinnedBuffer moved = std::move(b);
    EXPECT_FALSE(b);
    EXPECT_EQ(moved.data(), first);
  }

  // Round trip of 3 MB through two staging buffers on a stream.
  const int64_t n = 750000;
  std::vector<float> host(n);
  for (int64_t i = 0; i < n; ++i) host[i] = static_cast<float>(i) * 0.25f - 7.0f;
  cuda::Stream stream;
  test::DeviceArray<float> dev(n);
  {
    cuda::PinnedBuffer up = pool.acquire(n * sizeof(float));
    cuda::PinnedBuffer down = pool.acquire(n * sizeof(float));
    EXPECT_NE(up.data(), down.data());
    std::memcpy(up.data(), host.data(), n * sizeof(float));
    GENREC_CUDA_CHECK(
        cudaMemcpyAsync(dev.get(), up.data(), n * sizeof(float), cudaMemcpyHostToDevice, stream));
    GENREC_CUDA_CHECK(
        cudaMemcpyAsync(down.data(), dev.get(), n * sizeof(float), cudaMemcpyDeviceToHost, stream));
    stream.synchronize();
    EXPECT_EQ(0, std::memcmp(down.data(), host.data(), n * sizeof(float)));
  }
  const auto warm = pool.stats();
  { cuda::PinnedBuffer again = pool.acquire(n * sizeof(float)); }
  EXPECT_EQ(pool.stats().num_host_allocs, warm.num_host_allocs);
  pool.release_cached();
  EXPECT_EQ(pool.stats().bytes_reserved, 0u);
}

}  // namespace
}  // namespace genrec
