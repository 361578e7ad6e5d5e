// fp32 <-> bf16 conversion kernels: a grid-stride loop, fp32 in registers, round to nearest even.
#include "ops/cuda/kernel_util.cuh"  // first: it configures fmt for nvcc

#include <type_traits>

#include "ops/cuda/convert.h"

namespace genrec::cuda {
namespace {

template <typename TOut, typename TIn>
__global__ void convert_kernel(TOut* __restrict__ out, const TIn* __restrict__ in, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    out[i] = detail::from_float<TOut>(detail::to_float(in[i]));
  }
}

}  // namespace

template <typename TOut, typename TIn>
void convert(TOut* out, const TIn* in, int64_t n, cudaStream_t stream) {
  GENREC_CHECK(n >= 0, "convert: negative count {}", n);
  if (n == 0) return;
  if constexpr (std::is_same_v<TOut, TIn>) {
    if (static_cast<const void*>(out) != static_cast<const void*>(in)) {
      GENREC_CUDA_CHECK(cudaMemcpyAsync(out, in, static_cast<size_t>(n) * sizeof(TIn),
                                        cudaMemcpyDeviceToDevice, stream));
    }
  } else {
    convert_kernel<<<detail::grid_for(n, detail::kThreads), detail::kThreads, 0, stream>>>(out, in,
                                                                                           n);
    GENREC_CUDA_LAUNCH_CHECK("convert");
  }
}

template void convert<float, float>(float*, const float*, int64_t, cudaStream_t);
template void convert<__nv_bfloat16, float>(__nv_bfloat16*, const float*, int64_t, cudaStream_t);
template void convert<float, __nv_bfloat16>(float*, const __nv_bfloat16*, int64_t, cudaStream_t);
template void convert<__nv_bfloat16, __nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*, int64_t,
                                                    cudaStream_t);

}  // namespace genrec::cuda
