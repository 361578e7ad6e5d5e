// Tensor maps for Hopper's tensor memory accelerator (TMA): the driver's encoding of a global
// tensor and of the box one copy moves, which kernels take as a __grid_constant__ parameter.
#pragma once

#include <cuda.h>

#include <cstdint>

namespace genrec::cuda {

// A [tokens, heads, dim] head-sliced tensor of 16-bit values with a token stride of ld
// elements: one copy moves 64 token rows x 64 columns of one head into shared memory in the
// 128-byte swizzle layout wgmma reads (wgmma.cuh), and rows at or past `tokens` arrive as zeros.
// base and ld * 2 bytes must be 16-byte aligned, dim a multiple of 64.
CUtensorMap head_slice_map(const void* base, int64_t tokens, int64_t heads, int64_t dim,
                           int64_t ld);

}  // namespace genrec::cuda
