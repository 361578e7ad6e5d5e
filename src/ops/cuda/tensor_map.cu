#include "ops/cuda/kernel_util.cuh"  // first: it configures fmt for nvcc

#include "ops/cuda/tensor_map.h"

#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

#include "core/cuda/cuda_check.h"
#include "core/error.h"

namespace genrec::cuda {
namespace {

// The driver's encoder, found through the runtime so that nothing links the driver library.
PFN_cuTensorMapEncodeTiled_v12000 encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    GENREC_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000,
                                                       cudaEnableDefault, &found));
    GENREC_CHECK(found == cudaDriverEntryPointSuccess && fn != nullptr,
                 "tensor map: the CUDA driver has no cuTensorMapEncodeTiled (needs CUDA 12+)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encode;
}

}  // namespace

CUtensorMap head_slice_map(const void* base, int64_t tokens, int64_t heads, int64_t dim,
                           int64_t ld) {
  constexpr int64_t kBytes = 2;  // 16-bit values
  GENREC_CHECK(detail::aligned16(base) && (ld * kBytes) % 16 == 0 && dim % 64 == 0 &&
                   ld >= heads * dim && tokens > 0 && tokens < (int64_t{1} << 31),
               "tensor map: base {}, {} tokens x {} heads x {} dims with stride {} not mappable",
               base, tokens, heads, dim, ld);
  const cuuint64_t sizes[3] = {static_cast<cuuint64_t>(dim), static_cast<cuuint64_t>(heads),
                               static_cast<cuuint64_t>(tokens)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(dim * kBytes),
                                 static_cast<cuuint64_t>(ld * kBytes)};  // of dims 1 and 2
  const cuuint32_t box[3] = {64, 1, 64};
  const cuuint32_t steps[3] = {1, 1, 1};
  CUtensorMap map;
  const CUresult rc =
      encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_UINT16, 3, const_cast<void*>(base), sizes, strides,
                box, steps, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  GENREC_CHECK(rc == CUDA_SUCCESS, "tensor map: cuTensorMapEncodeTiled failed with error {}",
               static_cast<int>(rc));
  return map;
}

}  // namespace genrec::cuda
