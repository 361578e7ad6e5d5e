// The roofline of the HBM + host table rows: what the host link gives to DMA copies and to
// kernels that read and write random 256-byte rows of host memory through the mapping, as the
// table's kernels do. Pinned host memory comes three ways: cudaHostAlloc (the table's),
// anonymous memory advised to use transparent huge pages and then registered
// (cudaHostRegister), and a host-located memory pool (mapped into the device like device memory
// is), to see whether the page size of either side's mapping changes the cost of random access.
// On an H100 it does not: random rows over 16 GiB move at 7.8 GB/s all three ways, and at 43
// sorted by address.
#include "core/cuda/cuda_check.h"  // first: it configures fmt for nvcc

#include "host_link_probe.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <optional>
#include <vector>

#include "core/error.h"
#include "cuda_bench_util.h"

namespace genrec::bench {
namespace {

constexpr int64_t kRowFloats = 64;  // 256-byte rows, the table's dim-64 rows
constexpr int64_t kRows = 1 << 20;  // rows per call
constexpr int kTile = 16;           // lanes per row (a float4 each), as the table's kernels

// write = false: device row i = host row rows[i]; true: the other way round.
__global__ void host_rows_kernel(float* host, const int64_t* rows, float* dev, int64_t n,
                                 bool write) {
  const int64_t t = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kTile;
  const int lane = threadIdx.x % kTile;
  if (t >= n) return;
  float4* h = reinterpret_cast<float4*>(host + rows[t] * kRowFloats);
  float4* d = reinterpret_cast<float4*>(dev + t * kRowFloats);
  if (write) {
    h[lane] = d[lane];
  } else {
    d[lane] = h[lane];
  }
}

// Pinned host memory from a host-located memory pool, mapped into the current device.
struct HostPoolMemory {
  cudaMemPool_t pool = nullptr;
  void* data = nullptr;
  explicit HostPoolMemory(size_t bytes) {
    int device = 0;
    GENREC_CUDA_CHECK(cudaGetDevice(&device));
    cudaMemPoolProps props = {};
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeHost;
    props.maxSize = bytes;
    cudaMemAccessDesc access = {};
    access.location.type = cudaMemLocationTypeDevice;
    access.location.id = device;
    access.flags = cudaMemAccessFlagsProtReadWrite;
    cudaError_t err = cudaMemPoolCreate(&pool, &props);
    if (err == cudaSuccess) err = cudaMemPoolSetAccess(pool, &access, 1);
    if (err == cudaSuccess) err = cudaMallocFromPoolAsync(&data, bytes, pool, nullptr);
    if (err == cudaSuccess) err = cudaStreamSynchronize(nullptr);
    if (err != cudaSuccess) {
      cudaGetLastError();
      release();
      fail("host memory pool of {} bytes: {}", bytes, cudaGetErrorString(err));
    }
  }
  ~HostPoolMemory() { release(); }
  HostPoolMemory(const HostPoolMemory&) = delete;
  HostPoolMemory& operator=(const HostPoolMemory&) = delete;
  void release() {
    if (data != nullptr) cudaFree(data);
    if (pool != nullptr) cudaMemPoolDestroy(pool);
    data = nullptr;
    pool = nullptr;
  }
};

double gbps(double bytes, double ms) {
  return bytes / (ms * 1e-3) / 1e9;
}

}  // namespace

void print_host_link_probe(int64_t max_bytes, cudaStream_t stream) {
  std::printf(
      "\nHost link (the roofline of the HBM + host rows): DMA copies of 256 MiB, and kernels "
      "moving %lld random 256-byte rows between device memory and mapped host memory of the "
      "given size, in random order and sorted by address, GB/s of rows\n\n| host memory | size | "
      "DMA to device | DMA to host | random reads | random writes | sorted reads | sorted writes "
      "|\n|---|---|---|---|---|---|---|---|\n",
      static_cast<long long>(kRows));
  std::fflush(stdout);
  cuda::DeviceBuffer<float> dev(kRows * kRowFloats, stream);
  cuda::DeviceBuffer<int64_t> rows(kRows, stream);
  const double row_bytes = static_cast<double>(kRows * kRowFloats * sizeof(float));
  const char* const kinds[] = {"cudaHostAlloc", "anonymous, huge pages, registered",
                               "host memory pool"};
  for (int kind = 0; kind < 3; ++kind) {
    void* base = nullptr;
    std::optional<HostPoolMemory> pooled;
    if (kind == 1) {
      base = mmap(nullptr, max_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (base == MAP_FAILED) {
        std::printf("| %s | skipped: mmap of %lld bytes failed |\n", kinds[kind],
                    static_cast<long long>(max_bytes));
        continue;
      }
      madvise(base, max_bytes, MADV_HUGEPAGE);
      std::memset(base, 0, max_bytes);  // fault the pages in (as huge pages where it can)
      const cudaError_t err = cudaHostRegister(base, max_bytes, cudaHostRegisterMapped);
      if (err != cudaSuccess) {
        cudaGetLastError();
        munmap(base, max_bytes);
        std::printf("| %s | skipped: cudaHostRegister: %s |\n", kinds[kind],
                    cudaGetErrorString(err));
        continue;
      }
    } else if (kind == 0) {
      const cudaError_t err = cudaHostAlloc(&base, max_bytes, cudaHostAllocMapped);
      if (err != cudaSuccess) {
        cudaGetLastError();
        std::printf("| %s | skipped: %s |\n", kinds[kind], cudaGetErrorString(err));
        continue;
      }
      std::memset(base, 0, max_bytes);
    } else {
      try {
        pooled.emplace(static_cast<size_t>(max_bytes));
      } catch (const Error& e) {
        std::printf("| %s | skipped: %s |\n", kinds[kind], e.what());
        continue;
      }
      base = pooled->data;
    }
    float* mapped = static_cast<float*>(base);
    if (kind != 2) {
      GENREC_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&mapped), base, 0));
    }
    const double dma_bytes = 256.0 * (1 << 20);
    const double h2d =
        gbps(dma_bytes, median_ms(
                            [&] {
                              GENREC_CUDA_CHECK(cudaMemcpyAsync(dev.data(), base, dma_bytes,
                                                                cudaMemcpyDefault, stream));
                            },
                            stream));
    const double d2h =
        gbps(dma_bytes, median_ms(
                            [&] {
                              GENREC_CUDA_CHECK(cudaMemcpyAsync(base, dev.data(), dma_bytes,
                                                                cudaMemcpyDefault, stream));
                            },
                            stream));
    for (int64_t size = int64_t{1} << 30; size <= max_bytes; size *= 4) {
      const int64_t host_rows = size / static_cast<int64_t>(kRowFloats * sizeof(float));
      std::vector<int64_t> picks(kRows);
      uint64_t state = 88172645463325252ull;
      for (auto& r : picks) {  // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        r = static_cast<int64_t>(state % static_cast<uint64_t>(host_rows));
      }
      const unsigned grid = static_cast<unsigned>(kRows * kTile / 256);
      auto run = [&](bool write) {
        GENREC_CUDA_CHECK(cudaMemcpyAsync(rows.data(), picks.data(), sizeof(int64_t) * kRows,
                                          cudaMemcpyHostToDevice, stream));
        return gbps(row_bytes, median_ms(
                                   [&] {
                                     host_rows_kernel<<<grid, 256, 0, stream>>>(
                                         mapped, rows.data(), dev.data(), kRows, write);
                                     GENREC_CUDA_LAUNCH_CHECK("host rows");
                                   },
                                   stream));
      };
      const double reads = run(false), writes = run(true);
      std::sort(picks.begin(), picks.end());
      const double sorted_reads = run(false), sorted_writes = run(true);
      std::printf("| %s | %lld GiB | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", kinds[kind],
                  static_cast<long long>(size >> 30), h2d, d2h, reads, writes, sorted_reads,
                  sorted_writes);
      std::fflush(stdout);
    }
    if (kind == 1) {
      GENREC_CUDA_CHECK(cudaHostUnregister(base));
      munmap(base, max_bytes);
    } else if (kind == 0) {
      GENREC_CUDA_CHECK(cudaFreeHost(base));
    }
  }
}

}  // namespace genrec::bench
