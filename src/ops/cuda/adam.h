// CUDA Adam/AdamW, same semantics as ops/adam.h (genrec::cpu) on device pointers: fp32
// parameters, gradients and moments, one fused pass that can also write a bf16 copy of the
// updated parameters (the weights the bf16 forward reads) so no separate conversion is needed.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "ops/adam.h"

namespace genrec::cuda {

using AdamConfig = cpu::AdamConfig;

// One update of n parameters; step counts from 1 (bias correction). param_bf16, when not
// null, receives bf16(param) after the update.
void adam_update(float* param, const float* grad, float* m, float* v, int64_t n,
                 const AdamConfig& config, int64_t step, __nv_bfloat16* param_bf16,
                 cudaStream_t stream);

inline void adam_update(float* param, const float* grad, float* m, float* v, int64_t n,
                        const AdamConfig& config, int64_t step, cudaStream_t stream) {
  adam_update(param, grad, m, v, n, config, step, nullptr, stream);
}

}  // namespace genrec::cuda
