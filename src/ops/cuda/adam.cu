// Fused Adam/AdamW: the bias corrections are folded into a step size and an eps scale on the
// host in double, exactly as the CPU op, and the per-element update uses round-to-nearest
// intrinsics in the CPU op's operation order (no FMA contraction), so it reproduces the CPU's
// float arithmetic.
#include "ops/cuda/kernel_util.cuh"  // first: it configures fmt for nvcc

#include <cmath>

#include "ops/cuda/adam.h"

namespace genrec::cuda {
namespace {

struct AdamScalars {
  float beta1, beta2, eps, step_size, inv_sqrt_bias2, l2, decay;
};

__global__ void adam_kernel(float* param, const float* grad, float* m, float* v, int64_t n,
                            AdamScalars s, __nv_bfloat16* param_bf16) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float p = param[i];
    const float g = __fadd_rn(grad[i], __fmul_rn(s.l2, p));
    const float mi = __fadd_rn(__fmul_rn(s.beta1, m[i]), __fmul_rn(__fsub_rn(1.0f, s.beta1), g));
    const float vi =
        __fadd_rn(__fmul_rn(s.beta2, v[i]), __fmul_rn(__fmul_rn(__fsub_rn(1.0f, s.beta2), g), g));
    m[i] = mi;
    v[i] = vi;
    const float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(vi), s.inv_sqrt_bias2), s.eps);
    const float updated =
        __fsub_rn(__fmul_rn(p, s.decay), __fdiv_rn(__fmul_rn(s.step_size, mi), denom));
    param[i] = updated;
    if (param_bf16 != nullptr) param_bf16[i] = __float2bfloat16_rn(updated);
  }
}

}  // namespace

void adam_update(float* param, const float* grad, float* m, float* v, int64_t n,
                 const AdamConfig& config, int64_t step, __nv_bfloat16* param_bf16,
                 cudaStream_t stream) {
  GENREC_CHECK(step >= 1, "adam: step counts from 1, got {}", step);
  if (n <= 0) return;
  const double bias1 = 1.0 - std::pow(static_cast<double>(config.beta1), static_cast<double>(step));
  const double bias2 = 1.0 - std::pow(static_cast<double>(config.beta2), static_cast<double>(step));
  AdamScalars s{};
  s.beta1 = config.beta1;
  s.beta2 = config.beta2;
  s.eps = config.eps;
  s.step_size = static_cast<float>(config.lr / bias1);
  s.inv_sqrt_bias2 = static_cast<float>(1.0 / std::sqrt(bias2));
  s.l2 = config.decoupled ? 0.0f : config.weight_decay;
  s.decay = config.decoupled ? 1.0f - config.lr * config.weight_decay : 1.0f;
  adam_kernel<<<detail::grid_for(n, detail::kThreads), detail::kThreads, 0, stream>>>(
      param, grad, m, v, n, s, param_bf16);
  GENREC_CUDA_LAUNCH_CHECK("adam_update");
}

}  // namespace genrec::cuda
