// GENREC_HOST_DEVICE: functions that the CPU code and CUDA kernels share (one definition of
// maths that both sides must compute identically, e.g. hashes and RNG streams).
#pragma once

#if defined(__CUDACC__)
#define GENREC_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GENREC_HOST_DEVICE inline
#endif
