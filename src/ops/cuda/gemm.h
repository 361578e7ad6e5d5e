// CUDA dense products and the linear layer, same semantics as ops/gemm.h (genrec::cpu) on
// device pointers (row-major; activation gradients written, parameter gradients +=). Products
// run on cuBLASLt with fp32 accumulation (CUBLAS_COMPUTE_32F: no TF32, so fp32 is exact fp32);
// each distinct shape's descriptors and algorithm are found once and cached in the
// GemmContext, so a repeated shape costs no heuristic search.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>

namespace genrec::cuda {

struct GemmStats {
  int64_t calls = 0;              // products run (each gemm / linear product counts one)
  int64_t heuristic_queries = 0;  // cuBLASLt algorithm searches (one per new shape)
  int64_t fallback_calls = 0;     // products cuBLASLt had no algorithm for (plain CUDA kernel)
};

// Owns a cuBLASLt handle, a 32 MiB workspace and the per-shape plan cache, on the device that
// was current at construction. Not thread-safe, and its workspace is shared by every call: use
// one context per device and stream.
class GemmContext {
 public:
  GemmContext();
  ~GemmContext();
  GemmContext(const GemmContext&) = delete;
  GemmContext& operator=(const GemmContext&) = delete;

  int device() const;
  size_t cached_plans() const;
  GemmStats stats() const;
  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// C[M,N] = alpha * op(A) * op(B) + beta * C, op(X) = X or Xᵀ; lda/ldb/ldc are row strides.
// beta == 0 never reads C. T = float (fp32 math) or __nv_bfloat16 (bf16 in and out, fp32
// accumulation).
template <typename T>
void gemm(GemmContext& ctx, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
          float alpha, const T* A, int64_t lda, const T* B, int64_t ldb, float beta, T* C,
          int64_t ldc, cudaStream_t stream);

// As gemm, with bf16 A and B and an fp32 C (weight gradients accumulated into fp32).
void gemm_accumulate_f32(GemmContext& ctx, bool trans_a, bool trans_b, int64_t M, int64_t N,
                         int64_t K, float alpha, const __nv_bfloat16* A, int64_t lda,
                         const __nv_bfloat16* B, int64_t ldb, float beta, float* C, int64_t ldc,
                         cudaStream_t stream);
// fp32 A and B: gemm<float>; lets code templated on T call one name.
void gemm_accumulate_f32(GemmContext& ctx, bool trans_a, bool trans_b, int64_t M, int64_t N,
                         int64_t K, float alpha, const float* A, int64_t lda, const float* B,
                         int64_t ldb, float beta, float* C, int64_t ldc, cudaStream_t stream);

// out[tokens,OC] = in[tokens,IC] · weight[IC,OC] + bias[OC] (bias fp32, may be null). The bias
// is added in cuBLASLt's epilogue (for bf16 it is rounded to bf16 first, the type the epilogue
// takes), or by a small kernel when cuBLASLt has no such algorithm for the shape.
template <typename T>
void linear_forward(GemmContext& ctx, T* out, const T* in, const T* weight, const float* bias,
                    int64_t tokens, int64_t IC, int64_t OC, cudaStream_t stream);

// d_in = d_out · weightᵀ (written; skipped when null), d_weight += inᵀ · d_out (fp32; skipped
// when null), d_bias += column sums of d_out (fp32, deterministic; skipped when null).
template <typename T>
void linear_backward(GemmContext& ctx, T* d_in, float* d_weight, float* d_bias, const T* d_out,
                     const T* in, const T* weight, int64_t tokens, int64_t IC, int64_t OC,
                     cudaStream_t stream);

}  // namespace genrec::cuda
