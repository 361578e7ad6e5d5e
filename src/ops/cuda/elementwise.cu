// Pointwise kernels: SiLU through detail::map (16 bytes per access), the others grid-stride loops
// over elements (one warp per row for L2 normalisation, accumulating in fp64 like the CPU op).
// Dropout draws one Philox4x32 block per thread for four consecutive elements: word k of block
// b is philox_u32(seed, offset, 4b + k), the word philox_uniform reads, so masks equal the
// CPU's exactly.
#include "ops/cuda/pointwise.cuh"  // first: it configures fmt for nvcc

#include <cmath>
#include <type_traits>

#include "core/philox.h"
#include "ops/cuda/elementwise.h"

namespace genrec::cuda {
namespace {

using detail::from_float;
using detail::to_float;

__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

__device__ __forceinline__ float sigmoid(float x) {
  return 1.0f / (1.0f + expf(-x));
}

struct SiluForward {
  __device__ float operator()(float x, float) const { return x * sigmoid(x); }
};
// (x, dy) -> dy silu'(x)
struct SiluBackward {
  __device__ float operator()(float x, float dy) const {
    const float s = sigmoid(x);
    return dy * (s * (1.0f + x * (1.0f - s)));
  }
};

template <typename T>
__global__ void gate_forward_kernel(T* out, const T* x, const T* u, int64_t ldu, int64_t tokens,
                                    int64_t C) {
  const int64_t n = tokens * C;
  for (int64_t i = global_thread(); i < n; i += grid_stride()) {
    const int64_t t = i / C, c = i - t * C;
    out[i] = from_float<T>(to_float(x[i]) * to_float(u[t * ldu + c]));
  }
}

template <typename T>
__global__ void gate_backward_kernel(T* d_x, T* d_u, const T* d_out, const T* x, const T* u,
                                     int64_t ldu, int64_t tokens, int64_t C) {
  const int64_t n = tokens * C;
  for (int64_t i = global_thread(); i < n; i += grid_stride()) {
    const int64_t t = i / C, c = i - t * C;
    const float g = to_float(d_out[i]), xv = to_float(x[i]), uv = to_float(u[t * ldu + c]);
    d_x[i] = from_float<T>(g * uv);
    d_u[t * ldu + c] = from_float<T>(g * xv);
  }
}

// One warp per row.
template <typename T>
__global__ void l2_normalize_forward_kernel(T* out, float* inv_norm, const T* x, int64_t tokens,
                                            int64_t C, float eps) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * detail::kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= tokens) return;
  const T* xr = x + row * C;
  double sq = 0.0;
  for (int64_t c = lane; c < C; c += 32) {
    const double v = to_float(xr[c]);
    sq += v * v;
  }
  sq = detail::warp_sum(sq);
  const float inv = static_cast<float>(1.0 / fmax(sqrt(sq), static_cast<double>(eps)));
  T* o = out + row * C;
  for (int64_t c = lane; c < C; c += 32) o[c] = from_float<T>(to_float(xr[c]) * inv);
  if (lane == 0) inv_norm[row] = inv;
}

template <typename T>
__global__ void l2_normalize_backward_kernel(T* d_x, const T* d_out, const T* out,
                                             const float* inv_norm, int64_t tokens, int64_t C,
                                             double unit_norm_sq) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * detail::kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= tokens) return;
  const T* g = d_out + row * C;
  const T* o = out + row * C;
  double dot = 0.0, sq = 0.0;
  for (int64_t c = lane; c < C; c += 32) {
    const double ov = to_float(o[c]), gv = to_float(g[c]);
    dot += ov * gv;
    sq += ov * ov;
  }
  dot = detail::warp_sum(dot);
  sq = detail::warp_sum(sq);
  const float proj = sq >= unit_norm_sq ? static_cast<float>(dot) : 0.0f;
  const float inv = inv_norm[row];
  T* dx = d_x + row * C;
  // Each lane reads g[c] and o[c] before writing dx[c], so d_x may alias d_out.
  for (int64_t c = lane; c < C; c += 32) {
    dx[c] = from_float<T>(inv * (to_float(g[c]) - to_float(o[c]) * proj));
  }
}

// Thread b handles elements 4b .. 4b+3 with one Philox block.
template <typename T>
__global__ void dropout_kernel(T* out, const T* in, int64_t n, float p, float scale, uint64_t seed,
                               uint64_t offset) {
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b = global_thread(); b < blocks; b += grid_stride()) {
    const uint64_t block = static_cast<uint64_t>(b);
    const Philox4 r =
        philox4x32(Philox4{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                           static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)},
                   static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    const uint32_t words[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t i = 4 * b + k;
      if (i < n) {
        // The same expression as philox_uniform(seed, offset, i).
        const float uniform = static_cast<float>(words[k] >> 8) * (1.0f / 16777216.0f);
        out[i] = uniform >= p ? from_float<T>(to_float(in[i]) * scale) : from_float<T>(0.0f);
      }
    }
  }
}

unsigned row_blocks(int64_t tokens) {
  return static_cast<unsigned>(detail::ceil_div(tokens, detail::kWarpsPerBlock));
}

}  // namespace

template <typename T>
void silu_forward(T* out, const T* in, int64_t n, cudaStream_t stream) {
  detail::map(out, in, static_cast<const T*>(nullptr), n, SiluForward{}, stream, "silu_forward");
}

template <typename T>
void silu_backward(T* d_in, const T* d_out, const T* in, int64_t n, cudaStream_t stream) {
  detail::map(d_in, in, d_out, n, SiluBackward{}, stream, "silu_backward");
}

template <typename T>
void gate_forward(T* out, const T* x, const T* u, int64_t ldu, int64_t tokens, int64_t C,
                  cudaStream_t stream) {
  GENREC_CHECK(ldu >= C, "gate: ldu {} < C {}", ldu, C);
  if (tokens <= 0 || C <= 0) return;
  gate_forward_kernel<<<detail::grid_for(tokens * C, detail::kThreads), detail::kThreads, 0,
                        stream>>>(out, x, u, ldu, tokens, C);
  GENREC_CUDA_LAUNCH_CHECK("gate_forward");
}

template <typename T>
void gate_backward(T* d_x, T* d_u, const T* d_out, const T* x, const T* u, int64_t ldu,
                   int64_t tokens, int64_t C, cudaStream_t stream) {
  GENREC_CHECK(ldu >= C, "gate: ldu {} < C {}", ldu, C);
  if (tokens <= 0 || C <= 0) return;
  gate_backward_kernel<<<detail::grid_for(tokens * C, detail::kThreads), detail::kThreads, 0,
                         stream>>>(d_x, d_u, d_out, x, u, ldu, tokens, C);
  GENREC_CUDA_LAUNCH_CHECK("gate_backward");
}

template <typename T>
void l2_normalize_forward(T* out, float* inv_norm, const T* x, int64_t tokens, int64_t C, float eps,
                          cudaStream_t stream) {
  if (tokens <= 0) return;
  l2_normalize_forward_kernel<<<row_blocks(tokens), detail::kThreads, 0, stream>>>(out, inv_norm, x,
                                                                                   tokens, C, eps);
  GENREC_CUDA_LAUNCH_CHECK("l2_normalize_forward");
}

template <typename T>
void l2_normalize_backward(T* d_x, const T* d_out, const T* out, const float* inv_norm,
                           int64_t tokens, int64_t C, cudaStream_t stream) {
  if (tokens <= 0) return;
  // fp32: the CPU op's threshold. bf16: each out[c]^2 is off by up to 2^-7 relative after
  // rounding, so ||out||^2 of a unit row lies in [1 - 2^-7, 1 + 2^-7]; 1 - 2^-5 leaves a factor
  // of 4 while a clamped row (||out|| = ||x|| / eps < 1) is still told apart unless its norm
  // was within 3% of eps.
  const double unit_norm_sq = std::is_same_v<T, float> ? 1.0 - 1e-5 : 1.0 - 1.0 / 32.0;
  l2_normalize_backward_kernel<<<row_blocks(tokens), detail::kThreads, 0, stream>>>(
      d_x, d_out, out, inv_norm, tokens, C, unit_norm_sq);
  GENREC_CUDA_LAUNCH_CHECK("l2_normalize_backward");
}

template <typename T>
void dropout_forward(T* out, const T* in, int64_t n, float p, uint64_t seed, uint64_t offset,
                     cudaStream_t stream) {
  GENREC_CHECK(p >= 0.0f && p <= 1.0f, "dropout probability {} outside [0, 1]", p);
  if (n <= 0) return;
  if (p == 0.0f) {
    if (out != in) {
      GENREC_CUDA_CHECK(cudaMemcpyAsync(out, in, static_cast<size_t>(n) * sizeof(T),
                                        cudaMemcpyDeviceToDevice, stream));
    }
    return;
  }
  const float scale = 1.0f / (1.0f - p);  // as the CPU op: inf for p = 1, when nothing is kept
  dropout_kernel<<<detail::grid_for(detail::ceil_div(n, 4), detail::kThreads), detail::kThreads, 0,
                   stream>>>(out, in, n, p, scale, seed, offset);
  GENREC_CUDA_LAUNCH_CHECK("dropout");
}

template <typename T>
void dropout_backward(T* d_in, const T* d_out, int64_t n, float p, uint64_t seed, uint64_t offset,
                      cudaStream_t stream) {
  dropout_forward(d_in, d_out, n, p, seed, offset, stream);
}

#define GENREC_INSTANTIATE(T)                                                                     \
  template void silu_forward<T>(T*, const T*, int64_t, cudaStream_t);                             \
  template void silu_backward<T>(T*, const T*, const T*, int64_t, cudaStream_t);                  \
  template void gate_forward<T>(T*, const T*, const T*, int64_t, int64_t, int64_t, cudaStream_t); \
  template void gate_backward<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, \
                                 cudaStream_t);                                                   \
  template void l2_normalize_forward<T>(T*, float*, const T*, int64_t, int64_t, float,            \
                                        cudaStream_t);                                            \
  template void l2_normalize_backward<T>(T*, const T*, const T*, const float*, int64_t, int64_t,  \
                                         cudaStream_t);                                           \
  template void dropout_forward<T>(T*, const T*, int64_t, float, uint64_t, uint64_t,              \
                                   cudaStream_t);                                                 \
  template void dropout_backward<T>(T*, const T*, int64_t, float, uint64_t, uint64_t, cudaStream_t);
GENREC_INSTANTIATE(float)
GENREC_INSTANTIATE(__nv_bfloat16)
#undef GENREC_INSTANTIATE

}  // namespace genrec::cuda
