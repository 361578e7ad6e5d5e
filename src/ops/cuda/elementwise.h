// CUDA pointwise ops of the HSTU block, same semantics as ops/elementwise.h (genrec::cpu) on
// device pointers: activations T in {float, __nv_bfloat16}, fp32 math, inv_norm in fp32.
// Dropout keeps element i iff philox_uniform(seed, offset, i) >= p, as the CPU op does, so the
// two produce the same mask bit for bit whatever the launch shape.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace genrec::cuda {

// out = x * sigmoid(x). In-place (out == in) is allowed.
template <typename T>
void silu_forward(T* out, const T* in, int64_t n, cudaStream_t stream);
// d_in = d_out * silu'(in), written. d_in == d_out is allowed.
template <typename T>
void silu_backward(T* d_in, const T* d_out, const T* in, int64_t n, cudaStream_t stream);

// out[t,c] = x[t,c] * u[t*ldu + c] for t < tokens, c < C.
template <typename T>
void gate_forward(T* out, const T* x, const T* u, int64_t ldu, int64_t tokens, int64_t C,
                  cudaStream_t stream);
// d_x[t,c] = d_out * u (written), d_u[t*ldu + c] = d_out * x (written, same stride as u).
template <typename T>
void gate_backward(T* d_x, T* d_u, const T* d_out, const T* x, const T* u, int64_t ldu,
                   int64_t tokens, int64_t C, cudaStream_t stream);

// out[t] = x[t] / max(||x[t]||, eps) over rows of C; inv_norm[t] = 1 / max(||x[t]||, eps).
template <typename T>
void l2_normalize_forward(T* out, float* inv_norm, const T* x, int64_t tokens, int64_t C, float eps,
                          cudaStream_t stream);
// d_x written, from d_out, the forward output and inv_norm. A row counts as unclamped when
// ||out||^2 >= 1 - 1e-5 (fp32, as the CPU op) or >= 1 - 2^-5 (bf16, whose rounding of out moves
// ||out||^2 by up to 2^-7).
template <typename T>
void l2_normalize_backward(T* d_x, const T* d_out, const T* out, const float* inv_norm,
                           int64_t tokens, int64_t C, cudaStream_t stream);

// Inverted dropout: kept elements scaled by 1/(1-p); p = 0 copies. In-place allowed.
template <typename T>
void dropout_forward(T* out, const T* in, int64_t n, float p, uint64_t seed, uint64_t offset,
                     cudaStream_t stream);
template <typename T>
void dropout_backward(T* d_in, const T* d_out, int64_t n, float p, uint64_t seed, uint64_t offset,
                      cudaStream_t stream);

}  // namespace genrec::cuda
