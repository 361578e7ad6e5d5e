// Element type conversion on the device between fp32 and bf16. fp32 -> bf16 rounds to nearest
// even, exactly as the host conversion __float2bfloat16 of cuda_bf16.h, so data rounded on the
// host (tests, checkpoints) and on the device agree bit for bit.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace genrec::cuda {

// out[i] = TOut(in[i]) for i < n. Instantiated for every pair of float and __nv_bfloat16
// (same-type pairs copy). out and in must not overlap unless they are equal with equal types.
template <typename TOut, typename TIn>
void convert(TOut* out, const TIn* in, int64_t n, cudaStream_t stream);

inline void float_to_bf16(__nv_bfloat16* out, const float* in, int64_t n, cudaStream_t stream) {
  convert(out, in, n, stream);
}
inline void bf16_to_float(float* out, const __nv_bfloat16* in, int64_t n, cudaStream_t stream) {
  convert(out, in, n, stream);
}

}  // namespace genrec::cuda
