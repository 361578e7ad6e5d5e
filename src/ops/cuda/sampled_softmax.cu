// As on the CPU, the negative logits are one GEMM written straight into probs[:, 1:] and each
// row is then made a softmax in place by one block; the per-row losses are reduced to the mean
// by a single block in fp64, so the loss is deterministic and never leaves the device unless
// asked. The products are the project's fp32 cuBLASLt GEMMs (ops/cuda/gemm.h): d_negatives
// reduces over every token (K x D outputs from N = 65536 rows in training), which a tiled kernel
// without a split of the reduction ran on 16 blocks for 12 ms a step.
#include "ops/cuda/kernel_util.cuh"  // first: it configures fmt for nvcc

#include <limits>

#include "core/cuda/caching_allocator.h"
#include "core/error.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/sampled_softmax.h"

namespace genrec::cuda {
namespace {

using detail::ceil_div;

constexpr int kThreads = 256;
// Block-wide reductions of one value per thread (all threads get the result).
template <typename F>
__device__ __forceinline__ float block_reduce(float x, F op, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int o = 16; o > 0; o /= 2) x = op(x, __shfl_xor_sync(0xffffffffu, x, o));
  __syncthreads();  // scratch free from a previous call
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = scratch[0];
  for (int w = 1; w < kThreads / 32; ++w) x = op(x, scratch[w]);
  return x;
}

struct Sum {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Row n of probs: column 0 <- q·p / τ, masked negatives <- -inf, then softmax in place;
// row_loss[n] = logsumexp - logit0.
__global__ void __launch_bounds__(kThreads)
    softmax_rows_kernel(float* __restrict__ probs, float* __restrict__ row_loss,
                        const float* __restrict__ query, const float* __restrict__ positive,
                        const int64_t* __restrict__ positive_ids,
                        const int64_t* __restrict__ negative_ids, int64_t K, int64_t D,
                        float inv_t) {
  __shared__ float scratch[kThreads / 32];
  const int64_t n = blockIdx.x;
  const float* q = query + n * D;
  const float* p = positive + n * D;
  float* s = probs + n * (K + 1);
  float dot = 0.0f;
  for (int64_t d = threadIdx.x; d < D; d += kThreads) dot = fmaf(q[d], p[d], dot);
  const float logit0 = block_reduce(dot, Sum{}, scratch) * inv_t;
  float max = -INFINITY;
  if (K > 0) {
    const int64_t pos_id = positive_ids[n];
    for (int64_t k = threadIdx.x; k < K; k += kThreads) {
      float x = s[k + 1];
      if (negative_ids[k] == pos_id) {
        x = -INFINITY;
        s[k + 1] = x;
      }
      max = fmaxf(max, x);
    }
  }
  max = fmaxf(logit0, block_reduce(max, Max{}, scratch));
  float sum = 0.0f;
  for (int64_t k = threadIdx.x; k <= K; k += kThreads) {
    const float e = expf((k == 0 ? logit0 : s[k]) - max);
    s[k] = e;
    sum += e;
  }
  const float total = block_reduce(sum, Sum{}, scratch);
  const float inv_sum = 1.0f / total;
  for (int64_t k = threadIdx.x; k <= K; k += kThreads) s[k] *= inv_sum;
  if (threadIdx.x == 0) row_loss[n] = logf(total) + (max - logit0);
}

// *loss = mean of row_loss[0..N), summed in fp64 in a fixed order.
__global__ void __launch_bounds__(kThreads)
    mean_kernel(float* __restrict__ loss, const float* __restrict__ row_loss, int64_t N) {
  __shared__ double partial[kThreads];
  double sum = 0.0;
  for (int64_t n = threadIdx.x; n < N; n += kThreads) sum += row_loss[n];
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) partial[threadIdx.x] += partial[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *loss = static_cast<float>(partial[0] / static_cast<double>(N));
}

// d_query += g_n p, d_positive = g_n q with g_n = (probs[n, 0] - 1) * scale.
__global__ void positive_grads_kernel(float* __restrict__ d_query, float* __restrict__ d_positive,
                                      const float* __restrict__ probs,
                                      const float* __restrict__ query,
                                      const float* __restrict__ positive, int64_t N, int64_t K,
                                      int64_t D, float scale) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= N * D) return;
  const int64_t n = e / D;
  const float g = (probs[n * (K + 1)] - 1.0f) * scale;
  d_query[e] += g * positive[e];
  d_positive[e] = g * query[e];
}

void check_args(int64_t N, int64_t K, int64_t D, float temperature, const int64_t* positive_ids,
                const int64_t* negative_ids) {
  GENREC_CHECK(temperature > 0.0f, "cuda sampled softmax: temperature {} must be > 0", temperature);
  GENREC_CHECK(N >= 0 && K >= 0 && D >= 0, "cuda sampled softmax: bad sizes N={} K={} D={}", N, K,
               D);
  GENREC_CHECK(N <= std::numeric_limits<int32_t>::max(), "cuda sampled softmax: N={} too large", N);
  GENREC_CHECK(K == 0 || (positive_ids != nullptr && negative_ids != nullptr),
               "cuda sampled softmax: positive and negative ids are needed to mask negatives");
}

}  // namespace

void sampled_softmax_forward_async(GemmContext& gemm_ctx, float* loss, float* probs,
                                   const float* query, const float* positive,
                                   const int64_t* positive_ids, const float* negatives,
                                   const int64_t* negative_ids, int64_t N, int64_t K, int64_t D,
                                   float temperature, cudaStream_t stream) {
  check_args(N, K, D, temperature, positive_ids, negative_ids);
  if (N == 0) {
    GENREC_CUDA_CHECK(cudaMemsetAsync(loss, 0, sizeof(float), stream));
    return;
  }
  const float inv_t = 1.0f / temperature;
  gemm<float>(gemm_ctx, false, true, N, K, D, inv_t, query, D, negatives, D, 0.0f, probs + 1, K + 1,
              stream);
  DeviceBuffer<float> row_loss(N, stream);
  softmax_rows_kernel<<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
      probs, row_loss.data(), query, positive, positive_ids, negative_ids, K, D, inv_t);
  GENREC_CUDA_LAUNCH_CHECK("sampled_softmax_forward (softmax)");
  mean_kernel<<<1, kThreads, 0, stream>>>(loss, row_loss.data(), N);
  GENREC_CUDA_LAUNCH_CHECK("sampled_softmax_forward (mean)");
}

float sampled_softmax_forward(GemmContext& gemm_ctx, float* probs, const float* query,
                              const float* positive, const int64_t* positive_ids,
                              const float* negatives, const int64_t* negative_ids, int64_t N,
                              int64_t K, int64_t D, float temperature, cudaStream_t stream) {
  check_args(N, K, D, temperature, positive_ids, negative_ids);
  if (N == 0) return 0.0f;
  DeviceBuffer<float> loss(1, stream);
  sampled_softmax_forward_async(gemm_ctx, loss.data(), probs, query, positive, positive_ids,
                                negatives, negative_ids, N, K, D, temperature, stream);
  float host = 0.0f;
  GENREC_CUDA_CHECK(
      cudaMemcpyAsync(&host, loss.data(), sizeof(float), cudaMemcpyDeviceToHost, stream));
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

void sampled_softmax_backward(GemmContext& gemm_ctx, float* d_query, float* d_positive,
                              float* d_negatives, const float* probs, const float* query,
                              const float* positive, const float* negatives, int64_t N, int64_t K,
                              int64_t D, float temperature, cudaStream_t stream) {
  GENREC_CHECK(temperature > 0.0f, "cuda sampled softmax: temperature {} must be > 0", temperature);
  GENREC_CHECK(N >= 0 && K >= 0 && D >= 0, "cuda sampled softmax: bad sizes N={} K={} D={}", N, K,
               D);
  if (N == 0) {
    if (K * D > 0) {
      GENREC_CUDA_CHECK(cudaMemsetAsync(d_negatives, 0, K * D * sizeof(float), stream));
    }
    return;
  }
  // dloss/dlogit = (probs - onehot(0)) / N; a logit is q·x / temperature.
  const float scale = 1.0f / (static_cast<float>(N) * temperature);
  const int64_t ld = K + 1;
  gemm<float>(gemm_ctx, false, false, N, D, K, scale, probs + 1, ld, negatives, D, 0.0f, d_query, D,
              stream);
  gemm<float>(gemm_ctx, true, false, K, D, N, scale, probs + 1, ld, query, D, 0.0f, d_negatives, D,
              stream);
  if (N * D > 0) {
    const int64_t blocks = ceil_div(N * D, kThreads);
    GENREC_CHECK(blocks <= std::numeric_limits<int32_t>::max(),
                 "cuda sampled softmax: N*D={} too large", N * D);
    positive_grads_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        d_query, d_positive, probs, query, positive, N, K, D, scale);
    GENREC_CUDA_LAUNCH_CHECK("sampled_softmax_backward (positive)");
  }
}

}  // namespace genrec::cuda
