// CUDA HSTU attention, the straightforward jagged reference kernels: scores are recomputed in
// every pass (forward, dq, dk/dv), so the backward needs no N×N storage and no atomics for
// dq/dk/dv; only the shared relative-bias gradients use atomics.
// Same maths and argument conventions as genrec::cpu::hstu_attention_* (ops/hstu_attention.h);
// all pointers are device pointers, including offsets, timestamps and the bias tables.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>

#include "ops/hstu_attention.h"

namespace genrec::cuda {

using HstuAttentionShape = cpu::HstuAttentionShape;
// position, time and timestamps are device pointers here.
using HstuRelativeBias = cpu::HstuRelativeBias;

// genrec::cpu::hstu_time_bucket, callable on the device: the same double-precision formula
// floor(ln(max(|dt|, 1)) / 0.301), capped at num_buckets - 1. Any two logs within 1 ulp (CUDA's
// and glibc's are) give the same bucket for every |dt| < 2e13 s (600k years): checked in high
// precision, the integers next to each boundary up to there keep ln(|dt|) / 0.301 more than
// 2.5 x (1 ulp of the log / 0.301 + 1 ulp of the quotient) away from the integer.
GENREC_HOST_DEVICE int64_t hstu_time_bucket(int64_t dt, int64_t num_buckets) {
  double a = static_cast<double>(dt < 0 ? -dt : dt);
  int64_t bucket = static_cast<int64_t>(::log(a < 1.0 ? 1.0 : a) / 0.301);
  return bucket < num_buckets - 1 ? bucket : num_buckets - 1;
}

#if defined(__CUDACC__)
// hstu_time_bucket with a float fast path: logf is within ~3e-5 of the exact quotient here
// (|dt| <= 2^63 so the quotient is < 146), so away from an integer (1e-3) its floor is the
// exact one; near an integer the double formula decides, exactly as on the CPU.
__device__ __forceinline__ int hstu_time_slot(int64_t dt, int64_t num_buckets) {
  const int64_t a = dt < 0 ? -dt : dt;
  int64_t bucket = 0;
  if (a > 1) {
    const float x = logf(static_cast<float>(a)) / 0.301f;
    if (fabsf(x - rintf(x)) > 1e-3f) {
      bucket = static_cast<int64_t>(x);
    } else {
      bucket = hstu_time_bucket(dt, INT64_MAX);
    }
  }
  return static_cast<int>(bucket < num_buckets - 1 ? bucket : num_buckets - 1);
}

#endif

// q, k, v, out as in the CPU op. offsets: device i64 [batch_size + 1]. max_len: the longest
// sequence length (or an upper bound); it sets the launch grid only, so a smaller value still
// gives correct results, just with less parallelism.
template <typename T>
void hstu_attention_forward(T* out, const T* q, const T* k, const T* v, const int64_t* offsets,
                            int64_t batch_size, const HstuAttentionShape& shape,
                            const HstuRelativeBias& bias, int64_t max_len, cudaStream_t stream);

// d_q, d_k, d_v written with the strides of q, k, v (other columns untouched); the fp32
// d_position_bias and d_time_bias accumulate (+=) and are skipped when null.
template <typename T>
void hstu_attention_backward(T* d_q, T* d_k, T* d_v, float* d_position_bias, float* d_time_bias,
                             const T* d_out, const T* q, const T* k, const T* v,
                             const int64_t* offsets, int64_t batch_size,
                             const HstuAttentionShape& shape, const HstuRelativeBias& bias,
                             int64_t max_len, cudaStream_t stream);

extern template void hstu_attention_forward<float>(float*, const float*, const float*, const float*,
                                                   const int64_t*, int64_t,
                                                   const HstuAttentionShape&,
                                                   const HstuRelativeBias&, int64_t, cudaStream_t);
extern template void hstu_attention_forward<__nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*,
                                                           const __nv_bfloat16*,
                                                           const __nv_bfloat16*, const int64_t*,
                                                           int64_t, const HstuAttentionShape&,
                                                           const HstuRelativeBias&, int64_t,
                                                           cudaStream_t);
extern template void hstu_attention_backward<float>(float*, float*, float*, float*, float*,
                                                    const float*, const float*, const float*,
                                                    const float*, const int64_t*, int64_t,
                                                    const HstuAttentionShape&,
                                                    const HstuRelativeBias&, int64_t, cudaStream_t);
extern template void hstu_attention_backward<__nv_bfloat16>(
    __nv_bfloat16*, __nv_bfloat16*, __nv_bfloat16*, float*, float*, const __nv_bfloat16*,
    const __nv_bfloat16*, const __nv_bfloat16*, const __nv_bfloat16*, const int64_t*, int64_t,
    const HstuAttentionShape&, const HstuRelativeBias&, int64_t, cudaStream_t);

}  // namespace genrec::cuda
