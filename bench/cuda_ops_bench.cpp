// Times the CUDA ops at training-sized shapes with CUDA events and prints a table a person can
// paste (device, shape, time, TFLOP/s or GB/s). Each row: 3 warm-up runs, then the median of
// `--iters` timed runs (default 20), each timed on its own pair of events.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "core/cuda/caching_allocator.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/device.h"
#include "core/cuda/stream.h"
#include "core/tensor.h"
#include "cuda_bench_util.h"
#include "ops/cuda/adam.h"
#include "ops/cuda/convert.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/embedding.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/layer_norm.h"

namespace {

using bf16 = __nv_bfloat16;
using genrec::bench::g_iters;
using genrec::bench::median_ms;
using genrec::bench::random_array;
using genrec::cuda::DeviceBuffer;

void row(const std::string& op, const char* dtype, const std::string& shape, double ms,
         double flops, double bytes) {
  const double s = ms * 1e-3;
  std::printf("| %-26s | %-4s | %-24s | %9.3f | %8s | %8s |\n", op.c_str(), dtype, shape.c_str(),
              ms, flops > 0 ? std::to_string(flops / s * 1e-12).substr(0, 6).c_str() : "-",
              bytes > 0 ? std::to_string(bytes / s * 1e-9).substr(0, 6).c_str() : "-");
}

template <typename T>
void bench_linear(genrec::cuda::GemmContext& ctx, int64_t tokens, int64_t IC, int64_t OC,
                  cudaStream_t stream) {
  const char* dt = std::is_same_v<T, float> ? "f32" : "bf16";
  auto in = random_array<T>(tokens * IC, 1, stream);
  auto w = random_array<T>(IC * OC, 2, stream);
  auto bias = random_array<float>(OC, 3, stream);
  auto d_out = random_array<T>(tokens * OC, 4, stream);
  DeviceBuffer<T> out(tokens * OC, stream), d_in(tokens * IC, stream);
  DeviceBuffer<float> d_w(IC * OC, stream), d_b(OC, stream);
  GENREC_CUDA_CHECK(cudaMemsetAsync(d_w.data(), 0, d_w.bytes(), stream));
  GENREC_CUDA_CHECK(cudaMemsetAsync(d_b.data(), 0, d_b.bytes(), stream));
  const std::string shape =
      std::to_string(tokens) + "x" + std::to_string(IC) + "->" + std::to_string(OC);
  const double flops = 2.0 * tokens * IC * OC;
  double ms = median_ms(
      [&] {
        genrec::cuda::linear_forward<T>(ctx, out.data(), in.data(), w.data(), bias.data(), tokens,
                                        IC, OC, stream);
      },
      stream);
  row("linear_forward (+bias)", dt, shape, ms, flops, 0);
  ms = median_ms(
      [&] {
        genrec::cuda::linear_backward<T>(ctx, d_in.data(), d_w.data(), d_b.data(), d_out.data(),
                                         in.data(), w.data(), tokens, IC, OC, stream);
      },
      stream);
  row("linear_backward (dx,dW,db)", dt, shape, ms, 2 * flops, 0);
}

template <typename T>
void bench_pointwise(int64_t tokens, int64_t C, cudaStream_t stream) {
  const char* dt = std::is_same_v<T, float> ? "f32" : "bf16";
  const int64_t n = tokens * C;
  const double e = sizeof(T);
  auto x = random_array<T>(n, 5, stream);
  auto g = random_array<T>(n, 6, stream);
  auto w = random_array<float>(C, 7, stream);
  DeviceBuffer<T> out(n, stream), dx(n, stream);
  DeviceBuffer<float> mean(tokens, stream), rstd(tokens, stream), dw(C, stream), db(C, stream);
  GENREC_CUDA_CHECK(cudaMemsetAsync(dw.data(), 0, dw.bytes(), stream));
  GENREC_CUDA_CHECK(cudaMemsetAsync(db.data(), 0, db.bytes(), stream));
  const std::string shape = std::to_string(tokens) + "x" + std::to_string(C);
  double ms = median_ms(
      [&] {
        genrec::cuda::layer_norm_forward<T>(out.data(), mean.data(), rstd.data(), x.data(),
                                            w.data(), w.data(), tokens, C, 1e-5f, stream);
      },
      stream);
  row("layer_norm_forward", dt, shape, ms, 0, 2.0 * n * e);
  ms = median_ms(
      [&] {
        genrec::cuda::layer_norm_backward<T>(dx.data(), dw.data(), db.data(), g.data(), x.data(),
                                             w.data(), mean.data(), rstd.data(), tokens, C, stream);
      },
      stream);
  row("layer_norm_backward", dt, shape, ms, 0, 5.0 * n * e);  // 2 reads twice + 1 write
  ms = median_ms([&] { genrec::cuda::silu_forward<T>(out.data(), x.data(), n, stream); }, stream);
  row("silu_forward", dt, shape, ms, 0, 2.0 * n * e);
  ms = median_ms(
      [&] { genrec::cuda::dropout_forward<T>(out.data(), x.data(), n, 0.2f, 1, 2, stream); },
      stream);
  row("dropout_forward", dt, shape, ms, 0, 2.0 * n * e);
}

template <typename T>
void bench_embedding(int64_t n, int64_t D, int64_t rows, cudaStream_t stream) {
  const char* dt = std::is_same_v<T, float> ? "f32" : "bf16";
  auto table = random_array<float>(rows * D, 8, stream);
  auto g = random_array<T>(n * D, 9, stream);
  std::vector<int64_t> ids(static_cast<size_t>(n));
  uint64_t s = 12345;
  for (auto& id : ids) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    id = static_cast<int64_t>((s >> 33) % static_cast<uint64_t>(rows));
  }
  DeviceBuffer<int64_t> d_ids(n, stream);
  GENREC_CUDA_CHECK(cudaMemcpyAsync(d_ids.data(), ids.data(), ids.size() * sizeof(int64_t),
                                    cudaMemcpyHostToDevice, stream));
  DeviceBuffer<T> out(n * D, stream);
  const std::string shape =
      std::to_string(n) + " ids x" + std::to_string(D) + " /" + std::to_string(rows);
  double ms = median_ms(
      [&] {
        genrec::cuda::embedding_gather<T>(out.data(), table.data(), d_ids.data(), n, D, rows,
                                          stream);
      },
      stream);
  row("embedding_gather", dt, shape, ms, 0, n * D * (4.0 + sizeof(T)));
  ms = median_ms(
      [&] {
        genrec::cuda::embedding_scatter_add<T>(table.data(), g.data(), d_ids.data(), n, D, rows,
                                               stream);
      },
      stream);
  row("embedding_scatter_add", dt, shape, ms, 0, n * D * (8.0 + sizeof(T)));
}

void bench_adam(int64_t n, cudaStream_t stream) {
  auto p = random_array<float>(n, 10, stream);
  auto g = random_array<float>(n, 11, stream);
  DeviceBuffer<float> m(n, stream), v(n, stream);
  DeviceBuffer<bf16> copy(n, stream);
  GENREC_CUDA_CHECK(cudaMemsetAsync(m.data(), 0, m.bytes(), stream));
  GENREC_CUDA_CHECK(cudaMemsetAsync(v.data(), 0, v.bytes(), stream));
  genrec::cuda::AdamConfig config;
  int64_t step = 1;
  double ms = median_ms(
      [&] {
        genrec::cuda::adam_update(p.data(), g.data(), m.data(), v.data(), n, config, step++,
                                  copy.data(), stream);
      },
      stream);
  row("adam_update (+bf16 copy)", "f32", std::to_string(n) + " params", ms, 0, n * 30.0);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    if (std::strcmp(argv[i], "--iters") == 0 && i + 1 < argc) g_iters = std::atoi(argv[++i]);
    if (std::strcmp(argv[i], "--help") == 0) {
      std::printf("usage: genrec_cuda_bench [--quick] [--iters N]\n");
      return 0;
    }
  }
  if (!genrec::cuda_available()) {
    std::printf("genrec_cuda_bench: no CUDA device\n");
    return 0;
  }
  try {
    std::printf("device: %s\n",
                genrec::cuda::device_summary(genrec::cuda::current_device()).c_str());
    if (const char* commit = std::getenv("GENREC_COMMIT")) std::printf("commit: %s\n", commit);
    std::printf("median of %d runs each\n\n", g_iters);
    std::printf("| %-26s | %-4s | %-24s | %9s | %8s | %8s |\n", "op", "type", "shape", "ms",
                "TFLOP/s", "GB/s");
    std::printf("|%s|%s|%s|%s|%s|%s|\n", std::string(28, '-').c_str(), std::string(6, '-').c_str(),
                std::string(26, '-').c_str(), std::string(11, '-').c_str(),
                std::string(10, '-').c_str(), std::string(10, '-').c_str());
    genrec::cuda::Stream stream;
    genrec::cuda::GemmContext ctx;
    const int64_t tokens = quick ? 8192 : 65536;
    bench_linear<bf16>(ctx, tokens, 512, 2048, stream);
    bench_linear<bf16>(ctx, tokens, 2048, 512, stream);
    bench_linear<bf16>(ctx, tokens, 512, 512, stream);
    bench_linear<float>(ctx, tokens, 512, 2048, stream);
    bench_pointwise<bf16>(tokens, 512, stream);
    bench_pointwise<float>(tokens, 512, stream);
    bench_embedding<bf16>(tokens, 256, 1000000, stream);
    bench_adam(quick ? 10000000 : 50000000, stream);
    const auto stats = genrec::cuda::CachingAllocator::global().stats();
    std::printf("\nallocator: peak %.1f MiB in use, %.1f MiB reserved, %lld cudaMalloc calls\n",
                stats.peak_bytes_in_use / 1048576.0, stats.bytes_reserved / 1048576.0,
                static_cast<long long>(stats.num_cuda_mallocs));
    const auto gs = ctx.stats();
    std::printf("gemm: %lld products, %lld heuristic searches, %lld fallback products\n",
                static_cast<long long>(gs.calls), static_cast<long long>(gs.heuristic_queries),
                static_cast<long long>(gs.fallback_calls));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "genrec_cuda_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
