// Checked CUDA calls: every runtime call and kernel launch names what failed.
#pragma once

// fmt turns its constexpr support off under nvcc, after which its C++20 consteval format checks
// no longer compile (g++ has it on). CMakeLists.txt passes -DFMT_USE_CONSTEXPR=1 to nvcc; for
// builds that do not, this turns it on when the header comes before anything including fmt.
#if defined(__CUDACC__) && !defined(FMT_USE_CONSTEXPR)
#define FMT_USE_CONSTEXPR 1
#endif

#include <cuda_runtime.h>

#include "core/error.h"

#define GENREC_CUDA_CHECK(call)                                                              \
  do {                                                                                       \
    cudaError_t genrec_err_ = (call);                                                        \
    if (genrec_err_ != cudaSuccess)                                                          \
      ::genrec::fail("CUDA error {} in {} at {}:{}", cudaGetErrorString(genrec_err_), #call, \
                     __FILE__, __LINE__);                                                    \
  } while (0)

// After a kernel launch: reports launch errors with the op's name.
#define GENREC_CUDA_LAUNCH_CHECK(op_name)                            \
  do {                                                               \
    cudaError_t genrec_err_ = cudaGetLastError();                    \
    if (genrec_err_ != cudaSuccess)                                  \
      ::genrec::fail("CUDA kernel {} failed to launch: {}", op_name, \
                     cudaGetErrorString(genrec_err_));               \
  } while (0)

// Name of a cublasStatus_t (cublasGetStatusName lives in libcublas, which genrec does not link:
// it uses cuBLASLt only).
namespace genrec {
inline const char* cublas_status_name(int status) {
  switch (status) {
    case 0:
      return "CUBLAS_STATUS_SUCCESS";
    case 1:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case 3:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case 7:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case 8:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case 11:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case 13:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case 14:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case 15:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    case 16:
      return "CUBLAS_STATUS_LICENSE_ERROR";
    default:
      return "unknown cuBLAS status";
  }
}
}  // namespace genrec

// cuBLAS / cuBLASLt calls (needs <cublasLt.h>): the status name and the call that failed.
#define GENREC_CUBLAS_CHECK(call)                                                         \
  do {                                                                                    \
    const int genrec_status_ = static_cast<int>(call);                                    \
    if (genrec_status_ != 0)                                                              \
      ::genrec::fail("cuBLAS error {} ({}) in {} at {}:{}",                               \
                     ::genrec::cublas_status_name(genrec_status_), genrec_status_, #call, \
                     __FILE__, __LINE__);                                                 \
  } while (0)
