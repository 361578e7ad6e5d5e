// cuBLASLt products. Row-major C = op(A) op(B) is column-major Cᵀ = op(B)ᵀ op(A)ᵀ, so each
// product hands cuBLASLt B's memory as its first operand and A's as its second with the same
// transpose flags, and never copies. A plan (descriptors + algorithm) is cached per shape,
// types, strides, epilogue and pointer alignments; when the heuristic finds nothing (with the
// bias epilogue, then without), a plain tiled kernel computes the product instead.
#include "ops/cuda/kernel_util.cuh"  // first: it configures fmt for nvcc

#include <cublasLt.h>

#include <cstdint>
#include <limits>
#include <type_traits>
#include <unordered_map>

#include "core/cuda/caching_allocator.h"
#include "ops/cuda/convert.h"
#include "ops/cuda/gemm.h"

namespace genrec::cuda {
namespace {

using detail::from_float;
using detail::to_float;

constexpr size_t kMaxPlans = 4096;  // the cache is cleared when a run sees more shapes

template <typename T>
constexpr cudaDataType_t cuda_type() {
  if constexpr (std::is_same_v<T, float>) {
    return CUDA_R_32F;
  } else {
    return CUDA_R_16BF;
  }
}

// Largest power of two <= 256 dividing the address (cuBLASLt's alignment preferences).
uint32_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && a % align != 0) align >>= 1;
  return align;
}

struct PlanKey {
  int ab_type, c_type;
  bool trans_a, trans_b, bias;
  int64_t M, N, K, lda, ldb, ldc;
  uint32_t align_a, align_b, align_c, align_bias;
  bool operator==(const PlanKey& o) const {
    return ab_type == o.ab_type && c_type == o.c_type && trans_a == o.trans_a &&
           trans_b == o.trans_b && bias == o.bias && M == o.M && N == o.N && K == o.K &&
           lda == o.lda && ldb == o.ldb && ldc == o.ldc && align_a == o.align_a &&
           align_b == o.align_b && align_c == o.align_c && align_bias == o.align_bias;
  }
};

struct PlanKeyHash {
  size_t operator()(const PlanKey& k) const {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&h](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
    mix(static_cast<uint64_t>(k.ab_type) | static_cast<uint64_t>(k.c_type) << 8 |
        static_cast<uint64_t>(k.trans_a) << 16 | static_cast<uint64_t>(k.trans_b) << 17 |
        static_cast<uint64_t>(k.bias) << 18);
    for (int64_t v : {k.M, k.N, k.K, k.lda, k.ldb, k.ldc}) mix(static_cast<uint64_t>(v));
    mix(static_cast<uint64_t>(k.align_a) | static_cast<uint64_t>(k.align_b) << 16 |
        static_cast<uint64_t>(k.align_c) << 32 | static_cast<uint64_t>(k.align_bias) << 48);
    return static_cast<size_t>(h);
  }
};

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool has_algo = false;
  bool bias_in_epilogue = false;

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() { destroy(); }
  void destroy() {
    if (op != nullptr) cublasLtMatmulDescDestroy(op);
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (c != nullptr) cublasLtMatrixLayoutDestroy(c);
    op = nullptr;
    a = b = c = nullptr;
  }
};

}  // namespace

struct GemmContext::Impl {
  int device = 0;
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::unordered_map<PlanKey, std::unique_ptr<Plan>, PlanKeyHash> plans;
  GemmStats stats;
};

GemmContext::GemmContext() : impl_(std::make_unique<Impl>()) {
  GENREC_CUDA_CHECK(cudaGetDevice(&impl_->device));
  GENREC_CUBLAS_CHECK(cublasLtCreate(&impl_->handle));
  GENREC_CUDA_CHECK(cudaMalloc(&impl_->workspace, kWorkspaceBytes));
}

GemmContext::~GemmContext() {
  impl_->plans.clear();
  if (impl_->workspace != nullptr) cudaFree(impl_->workspace);
  if (impl_->handle != nullptr) cublasLtDestroy(impl_->handle);
}

int GemmContext::device() const {
  return impl_->device;
}
size_t GemmContext::cached_plans() const {
  return impl_->plans.size();
}
GemmStats GemmContext::stats() const {
  return impl_->stats;
}

namespace {

// ---- kernels ----------------------------------------------------------------------------

constexpr int kTile = 16;

// C = alpha op(A) op(B) (+ beta C) (+ bias[j]), one 16x16 tile per block, fp32 accumulation.
// M runs along grid.x (up to 2^31 tiles), N along grid.y.
template <typename TAB, typename TC>
__global__ void gemm_fallback_kernel(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                                     float alpha, const TAB* A, int64_t lda, const TAB* B,
                                     int64_t ldb, float beta, TC* C, int64_t ldc,
                                     const float* bias) {
  __shared__ float as[kTile][kTile + 1];
  __shared__ float bs[kTile][kTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * kTile;
  float acc = 0.0f;
  for (int64_t k0 = 0; k0 < K; k0 += kTile) {
    // as[r][k] = op(A)(i0 + r, k0 + k), bs[k][c] = op(B)(k0 + k, j0 + c).
    {
      const int64_t i = i0 + ty, k = k0 + tx;
      float v = 0.0f;
      if (i < M && k < K) v = to_float(trans_a ? A[k * lda + i] : A[i * lda + k]);
      as[ty][tx] = v;
    }
    {
      const int64_t k = k0 + ty, j = j0 + tx;
      float v = 0.0f;
      if (k < K && j < N) v = to_float(trans_b ? B[j * ldb + k] : B[k * ldb + j]);
      bs[ty][tx] = v;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kTile; ++k) acc += as[ty][k] * bs[k][tx];
    __syncthreads();
  }
  const int64_t i = i0 + ty, j = j0 + tx;
  if (i < M && j < N) {
    float v = alpha * acc;
    if (beta != 0.0f) v += beta * to_float(C[i * ldc + j]);
    if (bias != nullptr) v += bias[j];
    C[i * ldc + j] = from_float<TC>(v);
  }
}

// C[i, j] += bias[j] over M x N (ldc).
template <typename TC>
__global__ void add_bias_kernel(TC* C, int64_t ldc, int64_t M, int64_t N, const float* bias) {
  const int64_t n = M * N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += stride) {
    const int64_t i = e / N, j = e - i * N;
    C[i * ldc + j] = from_float<TC>(to_float(C[i * ldc + j]) + bias[j]);
  }
}

// C = beta * C (beta == 0 writes zeros without reading C), + bias[j] when given: the product
// when K == 0 or alpha == 0.
template <typename TC>
__global__ void scale_kernel(TC* C, int64_t ldc, int64_t M, int64_t N, float beta,
                             const float* bias) {
  const int64_t n = M * N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += stride) {
    const int64_t i = e / N, j = e - i * N;
    float v = beta == 0.0f ? 0.0f : beta * to_float(C[i * ldc + j]);
    if (bias != nullptr) v += bias[j];
    C[i * ldc + j] = from_float<TC>(v);
  }
}

constexpr int kBiasTileRows = 8;
constexpr int64_t kBiasRowsPerChunk = 64;
constexpr int64_t kBiasMaxChunks = 256;

// partial[by, c] = sum of d_out[t, c] over the rows of chunk by (block 32 x kBiasTileRows).
template <typename T>
__global__ void column_partials_kernel(float* partial, const T* d_out, int64_t rows, int64_t cols,
                                       int64_t rows_per_chunk) {
  __shared__ float s[kBiasTileRows][33];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t t1 = min(rows, t0 + rows_per_chunk);
  float acc = 0.0f;
  if (c < cols) {
    for (int64_t t = t0 + threadIdx.y; t < t1; t += kBiasTileRows)
      acc += to_float(d_out[t * cols + c]);
  }
  s[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float sum = 0.0f;
    for (int k = 0; k < kBiasTileRows; ++k) sum += s[k][threadIdx.x];
    partial[blockIdx.y * cols + c] = sum;
  }
}

__global__ void column_finish_kernel(float* d_bias, const float* partial, int64_t chunks,
                                     int64_t cols) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float sum = 0.0f;
  for (int64_t k = 0; k < chunks; ++k) sum += partial[k * cols + c];
  d_bias[c] += sum;
}

// ---- cuBLASLt plans ---------------------------------------------------------------------

bool fits_int(int64_t x) {
  return x >= 0 && x <= std::numeric_limits<int>::max();
}

void set_desc(cublasLtMatmulDesc_t op, cublasLtMatmulDescAttributes_t attr, const void* value,
              size_t size) {
  GENREC_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, attr, value, size));
}

// Builds descriptors and asks the heuristic for one algorithm; has_algo false when it finds none.
void build_plan(GemmContext::Impl& ctx, Plan& plan, const PlanKey& key, bool bias_in_epilogue,
                const void* bias_ptr) {
  plan.destroy();
  plan.has_algo = false;
  plan.bias_in_epilogue = bias_in_epilogue;
  const auto ab_type = static_cast<cudaDataType_t>(key.ab_type);
  const auto c_type = static_cast<cudaDataType_t>(key.c_type);
  GENREC_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // cuBLASLt's first operand is B's memory (column-major view: op(B)ᵀ), its second A's.
  const cublasOperation_t op_first = key.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = key.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  set_desc(plan.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first));
  set_desc(plan.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second));
  if (bias_in_epilogue) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    const int32_t bias_type = key.c_type;
    set_desc(plan.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue));
    set_desc(plan.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type));
    // The heuristic reads the pointer's alignment (part of the key) but never dereferences it.
    set_desc(plan.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr, sizeof(bias_ptr));
  }
  const auto u = [](int64_t x) { return static_cast<uint64_t>(x); };
  // Column-major shapes: B's memory is [N, K] (no transpose) or [K, N]; A's is [K, M] or
  // [M, K]; C's is [N, M]. Each leading dimension is the row-major row stride.
  GENREC_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.a, ab_type, u(key.trans_b ? key.K : key.N),
                                                 u(key.trans_b ? key.N : key.K), key.ldb));
  GENREC_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.b, ab_type, u(key.trans_a ? key.M : key.K),
                                                 u(key.trans_a ? key.K : key.M), key.lda));
  GENREC_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.c, c_type, u(key.N), u(key.M), key.ldc));

  cublasLtMatmulPreference_t pref = nullptr;
  GENREC_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t workspace = GemmContext::kWorkspaceBytes;
  const uint32_t align_first = key.align_b, align_second = key.align_a, align_c = key.align_c;
  auto set_pref = [&](cublasLtMatmulPreferenceAttributes_t attr, const void* v, size_t size) {
    cublasStatus_t status = cublasLtMatmulPreferenceSetAttribute(pref, attr, v, size);
    if (status != CUBLAS_STATUS_SUCCESS) {
      cublasLtMatmulPreferenceDestroy(pref);
      GENREC_CUBLAS_CHECK(status);
    }
  };
  set_pref(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace));
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_first, sizeof(align_first));
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_second, sizeof(align_second));
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof(align_c));
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof(align_c));

  cublasLtMatmulHeuristicResult_t result{};
  int returned = 0;
  ++ctx.stats.heuristic_queries;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
      ctx.handle, plan.op, plan.a, plan.b, plan.c, plan.c, pref, 1, &result, &returned);
  cublasLtMatmulPreferenceDestroy(pref);
  if (status == CUBLAS_STATUS_SUCCESS && returned > 0 && result.state == CUBLAS_STATUS_SUCCESS) {
    plan.algo = result.algo;
    plan.has_algo = true;
  } else if (status != CUBLAS_STATUS_SUCCESS && status != CUBLAS_STATUS_NOT_SUPPORTED) {
    GENREC_CUBLAS_CHECK(status);
  }
}

Plan& find_plan(GemmContext::Impl& ctx, const PlanKey& key, const void* bias_ptr) {
  auto it = ctx.plans.find(key);
  if (it != ctx.plans.end()) return *it->second;
  if (ctx.plans.size() >= kMaxPlans) ctx.plans.clear();
  auto plan = std::make_unique<Plan>();
  build_plan(ctx, *plan, key, key.bias, bias_ptr);
  // No algorithm with the bias epilogue: the product alone, then a bias kernel.
  if (!plan->has_algo && key.bias) build_plan(ctx, *plan, key, false, nullptr);
  return *ctx.plans.emplace(key, std::move(plan)).first->second;
}

void check_shape(const char* what, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                 int64_t lda, int64_t ldb, int64_t ldc) {
  GENREC_CHECK(fits_int(M) && fits_int(N) && fits_int(K), "{}: bad sizes M={} N={} K={}", what, M,
               N, K);
  if (M == 0 || N == 0) return;
  GENREC_CHECK(ldc >= N, "{}: ldc {} < N {}", what, ldc, N);
  if (K == 0) return;
  const int64_t a_cols = trans_a ? M : K, b_cols = trans_b ? K : N;
  GENREC_CHECK(lda >= a_cols, "{}: lda {} < {} columns of A", what, lda, a_cols);
  GENREC_CHECK(ldb >= b_cols, "{}: ldb {} < {} columns of B", what, ldb, b_cols);
}

// C = alpha op(A) op(B) + beta C (+ bias[j], fp32, length N, when not null).
template <typename TAB, typename TC>
void matmul(GemmContext& context, const char* what, bool trans_a, bool trans_b, int64_t M,
            int64_t N, int64_t K, float alpha, const TAB* A, int64_t lda, const TAB* B, int64_t ldb,
            float beta, TC* C, int64_t ldc, const float* bias, cudaStream_t stream) {
  check_shape(what, trans_a, trans_b, M, N, K, lda, ldb, ldc);
  if (M == 0 || N == 0) return;
  GemmContext::Impl& ctx = context.impl();
  int device = 0;
  GENREC_CUDA_CHECK(cudaGetDevice(&device));
  GENREC_CHECK(device == ctx.device, "{}: GemmContext of device {} used on device {}", what,
               ctx.device, device);
  ++ctx.stats.calls;
  if (K == 0 || alpha == 0.0f) {
    scale_kernel<<<detail::grid_for(M * N, detail::kThreads), detail::kThreads, 0, stream>>>(
        C, ldc, M, N, beta, bias);
    GENREC_CUDA_LAUNCH_CHECK(what);
    return;
  }

  // The epilogue takes a bias of C's type, 16-byte aligned: fp32 is used in place when
  // aligned, anything else is staged (bf16: rounded) into scratch.
  DeviceBuffer<TC> staged_bias;
  const void* epilogue_bias = bias;
  if (bias != nullptr && (!std::is_same_v<TC, float> || alignment_of(bias) < 16)) {
    staged_bias = DeviceBuffer<TC>(N, stream);
    convert(staged_bias.data(), bias, N, stream);
    epilogue_bias = staged_bias.data();
  }
  const PlanKey key{static_cast<int>(cuda_type<TAB>()),
                    static_cast<int>(cuda_type<TC>()),
                    trans_a,
                    trans_b,
                    bias != nullptr,
                    M,
                    N,
                    K,
                    lda,
                    ldb,
                    ldc,
                    alignment_of(A),
                    alignment_of(B),
                    alignment_of(C),
                    bias != nullptr ? alignment_of(epilogue_bias) : 0u};
  Plan& plan = find_plan(ctx, key, epilogue_bias);

  if (!plan.has_algo) {
    ++ctx.stats.fallback_calls;
    const dim3 grid(static_cast<unsigned>(detail::ceil_div(M, kTile)),
                    static_cast<unsigned>(detail::ceil_div(N, kTile)));
    GENREC_CHECK(grid.y <= 65535u, "{}: N = {} too large for the fallback kernel", what, N);
    gemm_fallback_kernel<<<grid, dim3(kTile, kTile), 0, stream>>>(
        trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias);
    GENREC_CUDA_LAUNCH_CHECK(what);
    return;
  }
  if (plan.bias_in_epilogue) {
    set_desc(plan.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &epilogue_bias, sizeof(epilogue_bias));
  }
  GENREC_CUBLAS_CHECK(cublasLtMatmul(ctx.handle, plan.op, &alpha, B, plan.a, A, plan.b, &beta, C,
                                     plan.c, C, plan.c, &plan.algo, ctx.workspace,
                                     GemmContext::kWorkspaceBytes, stream));
  if (bias != nullptr && !plan.bias_in_epilogue) {
    add_bias_kernel<<<detail::grid_for(M * N, detail::kThreads), detail::kThreads, 0, stream>>>(
        C, ldc, M, N, bias);
    GENREC_CUDA_LAUNCH_CHECK(what);
  }
}

}  // namespace

template <typename T>
void gemm(GemmContext& ctx, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
          float alpha, const T* A, int64_t lda, const T* B, int64_t ldb, float beta, T* C,
          int64_t ldc, cudaStream_t stream) {
  matmul<T, T>(ctx, "gemm", trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, nullptr,
               stream);
}

void gemm_accumulate_f32(GemmContext& ctx, bool trans_a, bool trans_b, int64_t M, int64_t N,
                         int64_t K, float alpha, const __nv_bfloat16* A, int64_t lda,
                         const __nv_bfloat16* B, int64_t ldb, float beta, float* C, int64_t ldc,
                         cudaStream_t stream) {
  matmul<__nv_bfloat16, float>(ctx, "gemm_accumulate_f32", trans_a, trans_b, M, N, K, alpha, A, lda,
                               B, ldb, beta, C, ldc, nullptr, stream);
}

void gemm_accumulate_f32(GemmContext& ctx, bool trans_a, bool trans_b, int64_t M, int64_t N,
                         int64_t K, float alpha, const float* A, int64_t lda, const float* B,
                         int64_t ldb, float beta, float* C, int64_t ldc, cudaStream_t stream) {
  matmul<float, float>(ctx, "gemm_accumulate_f32", trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb,
                       beta, C, ldc, nullptr, stream);
}

template <typename T>
void linear_forward(GemmContext& ctx, T* out, const T* in, const T* weight, const float* bias,
                    int64_t tokens, int64_t IC, int64_t OC, cudaStream_t stream) {
  matmul<T, T>(ctx, "linear_forward", false, false, tokens, OC, IC, 1.0f, in, IC, weight, OC, 0.0f,
               out, OC, bias, stream);
}

template <typename T>
void linear_backward(GemmContext& ctx, T* d_in, float* d_weight, float* d_bias, const T* d_out,
                     const T* in, const T* weight, int64_t tokens, int64_t IC, int64_t OC,
                     cudaStream_t stream) {
  if (d_in != nullptr) {
    matmul<T, T>(ctx, "linear_backward (d_in)", false, true, tokens, IC, OC, 1.0f, d_out, OC,
                 weight, OC, 0.0f, d_in, IC, nullptr, stream);
  }
  if (d_weight != nullptr) {
    matmul<T, float>(ctx, "linear_backward (d_weight)", true, false, IC, OC, tokens, 1.0f, in, IC,
                     d_out, OC, 1.0f, d_weight, OC, nullptr, stream);
  }
  if (d_bias == nullptr || OC == 0 || tokens == 0) return;
  const int64_t chunks = std::min(kBiasMaxChunks, detail::ceil_div(tokens, kBiasRowsPerChunk));
  const int64_t rows_per_chunk = detail::ceil_div(tokens, chunks);
  DeviceBuffer<float> partial(chunks * OC, stream);
  const dim3 grid(static_cast<unsigned>(detail::ceil_div(OC, 32)), static_cast<unsigned>(chunks));
  column_partials_kernel<<<grid, dim3(32, kBiasTileRows), 0, stream>>>(partial.data(), d_out,
                                                                       tokens, OC, rows_per_chunk);
  GENREC_CUDA_LAUNCH_CHECK("linear_backward (d_bias partial sums)");
  column_finish_kernel<<<static_cast<unsigned>(detail::ceil_div(OC, detail::kThreads)),
                         detail::kThreads, 0, stream>>>(d_bias, partial.data(), chunks, OC);
  GENREC_CUDA_LAUNCH_CHECK("linear_backward (d_bias sums)");
}

#define GENREC_INSTANTIATE(T)                                                                      \
  template void gemm<T>(GemmContext&, bool, bool, int64_t, int64_t, int64_t, float, const T*,      \
                        int64_t, const T*, int64_t, float, T*, int64_t, cudaStream_t);             \
  template void linear_forward<T>(GemmContext&, T*, const T*, const T*, const float*, int64_t,     \
                                  int64_t, int64_t, cudaStream_t);                                 \
  template void linear_backward<T>(GemmContext&, T*, float*, float*, const T*, const T*, const T*, \
                                   int64_t, int64_t, int64_t, cudaStream_t);
GENREC_INSTANTIATE(float)
GENREC_INSTANTIATE(__nv_bfloat16)
#undef GENREC_INSTANTIATE

}  // namespace genrec::cuda
