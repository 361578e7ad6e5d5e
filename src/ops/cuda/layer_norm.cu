// LayerNorm kernels. Forward and d_in: one warp per row, fp32 statistics (two passes over the
// row: mean, then the centred sum of squares, as the CPU op). d_weight/d_bias: 32-column tiles
// x row chunks write fp32 partial sums to scratch, then one thread per column adds the chunks
// in order: no atomics, so the result never depends on scheduling.
#include "ops/cuda/kernel_util.cuh"  // first: it configures fmt for nvcc

#include "core/cuda/caching_allocator.h"
#include "ops/cuda/layer_norm.h"

namespace genrec::cuda {
namespace {

using detail::from_float;
using detail::to_float;

constexpr int kTileRows = 8;           // row lanes of a parameter-gradient block (32 x 8)
constexpr int64_t kRowsPerChunk = 64;  // rows each chunk of the partial sums covers, at least
constexpr int64_t kMaxChunks = 256;

template <typename T>
__global__ void layer_norm_forward_kernel(T* out, float* mean, float* rstd, const T* in,
                                          const float* weight, const float* bias, int64_t tokens,
                                          int64_t C, float eps) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * detail::kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= tokens) return;
  const T* x = in + row * C;
  float sum = 0.0f;
  for (int64_t c = lane; c < C; c += 32) sum += to_float(x[c]);
  sum = detail::warp_sum(sum);
  const float m = C > 0 ? sum / static_cast<float>(C) : 0.0f;
  float sq = 0.0f;
  for (int64_t c = lane; c < C; c += 32) {
    const float d = to_float(x[c]) - m;
    sq += d * d;
  }
  sq = detail::warp_sum(sq);
  const float r = 1.0f / sqrtf((C > 0 ? sq / static_cast<float>(C) : 0.0f) + eps);
  T* y = out + row * C;
  for (int64_t c = lane; c < C; c += 32) {
    float v = (to_float(x[c]) - m) * r;
    if (weight != nullptr) v *= weight[c];
    if (bias != nullptr) v += bias[c];
    y[c] = from_float<T>(v);
  }
  if (lane == 0) {
    if (mean != nullptr) mean[row] = m;
    if (rstd != nullptr) rstd[row] = r;
  }
}

// Block (32, kTileRows) covers columns [32 bx, 32 bx + 32) and the rows of chunk by:
// partial_w[by, c] = sum g * xhat, partial_b[by, c] = sum g over those rows.
template <typename T>
__global__ void layer_norm_param_partials_kernel(float* partial_w, float* partial_b, const T* d_out,
                                                 const T* in, const float* mean, const float* rstd,
                                                 int64_t tokens, int64_t C,
                                                 int64_t rows_per_chunk) {
  __shared__ float sw[kTileRows][33];
  __shared__ float sb[kTileRows][33];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t t1 = min(tokens, t0 + rows_per_chunk);
  float acc_w = 0.0f, acc_b = 0.0f;
  if (c < C) {
    for (int64_t t = t0 + threadIdx.y; t < t1; t += kTileRows) {
      const float g = to_float(d_out[t * C + c]);
      acc_w += g * ((to_float(in[t * C + c]) - mean[t]) * rstd[t]);
      acc_b += g;
    }
  }
  sw[threadIdx.y][threadIdx.x] = acc_w;
  sb[threadIdx.y][threadIdx.x] = acc_b;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float w = 0.0f, b = 0.0f;
    for (int k = 0; k < kTileRows; ++k) {
      w += sw[k][threadIdx.x];
      b += sb[k][threadIdx.x];
    }
    partial_w[blockIdx.y * C + c] = w;
    partial_b[blockIdx.y * C + c] = b;
  }
}

__global__ void layer_norm_param_finish_kernel(float* d_weight, float* d_bias,
                                               const float* partial_w, const float* partial_b,
                                               int64_t chunks, int64_t C) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float w = 0.0f, b = 0.0f;
  for (int64_t k = 0; k < chunks; ++k) {
    w += partial_w[k * C + c];
    b += partial_b[k * C + c];
  }
  if (d_weight != nullptr) d_weight[c] += w;
  if (d_bias != nullptr) d_bias[c] += b;
}

// d_in = r * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = g * weight.
template <typename T>
__global__ void layer_norm_backward_input_kernel(T* d_in, const T* d_out, const T* in,
                                                 const float* weight, const float* mean,
                                                 const float* rstd, int64_t tokens, int64_t C) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * detail::kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= tokens) return;
  const T* x = in + row * C;
  const T* g = d_out + row * C;
  const float m = mean[row], r = rstd[row];
  float sum_g = 0.0f, sum_gx = 0.0f;
  for (int64_t c = lane; c < C; c += 32) {
    const float dxhat = weight != nullptr ? to_float(g[c]) * weight[c] : to_float(g[c]);
    sum_g += dxhat;
    sum_gx += dxhat * ((to_float(x[c]) - m) * r);
  }
  sum_g = detail::warp_sum(sum_g);
  sum_gx = detail::warp_sum(sum_gx);
  const float mean_g = sum_g / static_cast<float>(C), mean_gx = sum_gx / static_cast<float>(C);
  T* dx = d_in + row * C;
  // Each lane reads g[c] before writing dx[c], and all reads of the sums came before: d_in may
  // alias d_out.
  for (int64_t c = lane; c < C; c += 32) {
    const float dxhat = weight != nullptr ? to_float(g[c]) * weight[c] : to_float(g[c]);
    dx[c] = from_float<T>(r * (dxhat - mean_g - (to_float(x[c]) - m) * r * mean_gx));
  }
}

unsigned row_blocks(int64_t tokens) {
  return static_cast<unsigned>(detail::ceil_div(tokens, detail::kWarpsPerBlock));
}

}  // namespace

template <typename T>
void layer_norm_forward(T* out, float* mean, float* rstd, const T* in, const float* weight,
                        const float* bias, int64_t tokens, int64_t C, float eps,
                        cudaStream_t stream) {
  GENREC_CHECK(tokens >= 0 && C >= 0, "layer_norm: bad shape [{}, {}]", tokens, C);
  if (tokens == 0) return;
  layer_norm_forward_kernel<<<row_blocks(tokens), detail::kThreads, 0, stream>>>(
      out, mean, rstd, in, weight, bias, tokens, C, eps);
  GENREC_CUDA_LAUNCH_CHECK("layer_norm_forward");
}

template <typename T>
void layer_norm_backward(T* d_in, float* d_weight, float* d_bias, const T* d_out, const T* in,
                         const float* weight, const float* mean, const float* rstd, int64_t tokens,
                         int64_t C, cudaStream_t stream) {
  GENREC_CHECK(tokens >= 0 && C >= 0, "layer_norm: bad shape [{}, {}]", tokens, C);
  if (tokens == 0 || C == 0) return;
  // Parameter gradients first: stream order then lets d_in alias d_out.
  if (d_weight != nullptr || d_bias != nullptr) {
    const int64_t chunks = std::min(kMaxChunks, detail::ceil_div(tokens, kRowsPerChunk));
    const int64_t rows_per_chunk = detail::ceil_div(tokens, chunks);
    DeviceBuffer<float> partials(2 * chunks * C, stream);
    const dim3 grid(static_cast<unsigned>(detail::ceil_div(C, 32)), static_cast<unsigned>(chunks));
    layer_norm_param_partials_kernel<<<grid, dim3(32, kTileRows), 0, stream>>>(
        partials.data(), partials.data() + chunks * C, d_out, in, mean, rstd, tokens, C,
        rows_per_chunk);
    GENREC_CUDA_LAUNCH_CHECK("layer_norm_backward (parameter partial sums)");
    layer_norm_param_finish_kernel<<<static_cast<unsigned>(detail::ceil_div(C, detail::kThreads)),
                                     detail::kThreads, 0, stream>>>(
        d_weight, d_bias, partials.data(), partials.data() + chunks * C, chunks, C);
    GENREC_CUDA_LAUNCH_CHECK("layer_norm_backward (parameter sums)");
  }
  if (d_in != nullptr) {
    layer_norm_backward_input_kernel<<<row_blocks(tokens), detail::kThreads, 0, stream>>>(
        d_in, d_out, in, weight, mean, rstd, tokens, C);
    GENREC_CUDA_LAUNCH_CHECK("layer_norm_backward (input gradient)");
  }
}

#define GENREC_INSTANTIATE(T)                                                                   \
  template void layer_norm_forward<T>(T*, float*, float*, const T*, const float*, const float*, \
                                      int64_t, int64_t, float, cudaStream_t);                   \
  template void layer_norm_backward<T>(T*, float*, float*, const T*, const T*, const float*,    \
                                       const float*, const float*, int64_t, int64_t,            \
                                       cudaStream_t);
GENREC_INSTANTIATE(float)
GENREC_INSTANTIATE(__nv_bfloat16)
#undef GENREC_INSTANTIATE

}  // namespace genrec::cuda
