// Checked CUDA calls: every runtime call and kernel launch names what failed.
#pragma once

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
#define GENREC_CUDA_LAUNCH_CHECK(op_name)                                                     \
  do {                                                                                        \
    cudaError_t genrec_err_ = cudaGetLastError();                                             \
    if (genrec_err_ != cudaSuccess)                                                           \
      ::genrec::fail("CUDA kernel {} failed to launch: {}", op_name,                          \
                     cudaGetErrorString(genrec_err_));                                        \
  } while (0)
