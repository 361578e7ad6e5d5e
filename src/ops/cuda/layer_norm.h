// CUDA LayerNorm over the last axis, same semantics as ops/layer_norm.h (genrec::cpu) on device
// pointers: activations T in {float, __nv_bfloat16}; weight, bias, their gradients and the
// saved mean/rstd are fp32. d_weight and d_bias are reduced without atomics (per-chunk partial
// sums, then a fixed-order second pass), so they are bit-reproducible from run to run.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace genrec::cuda {

// out = (in - mean) * rstd * weight + bias over rows of C; weight and bias may be null. Saves
// mean[tokens] and rstd[tokens] (either may be null when no backward follows).
template <typename T>
void layer_norm_forward(T* out, float* mean, float* rstd, const T* in, const float* weight,
                        const float* bias, int64_t tokens, int64_t C, float eps,
                        cudaStream_t stream);

// d_in written (d_in == d_out allowed); d_weight and d_bias accumulate (+=), skipped when null.
template <typename T>
void layer_norm_backward(T* d_in, float* d_weight, float* d_bias, const T* d_out, const T* in,
                         const float* weight, const float* mean, const float* rstd, int64_t tokens,
                         int64_t C, cudaStream_t stream);

}  // namespace genrec::cuda
