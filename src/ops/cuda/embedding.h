// CUDA embedding table access, same semantics as ops/embedding.h (genrec::cpu) on device
// pointers: the table and its gradient are fp32, gathered rows and row gradients are T in
// {float, __nv_bfloat16}. The scatter-add uses no atomics: (id, position) pairs are radix-sorted
// (stable) and each run of equal ids is summed by one warp in position order, starting from the
// table's value — the CPU op's summation order, so fp32 results equal the CPU's bit for bit.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace genrec::cuda {

// out[i] = T(table[ids[i]]) for i < n; rows of D. ids are not checked here (that would need a
// device-to-host round trip): an id outside [0, num_rows) gives a zero row, never a read
// outside the table. Validate ids on the host, or with embedding_check_ids.
template <typename T>
void embedding_gather(T* out, const float* table, const int64_t* ids, int64_t n, int64_t D,
                      int64_t num_rows, cudaStream_t stream);

// d_table[ids[i]] += d_out[i]; duplicates accumulate in order of i. Out-of-range ids are
// skipped. Scratch (about 24 bytes per id plus CUB's) comes from the caching allocator.
template <typename T>
void embedding_scatter_add(float* d_table, const T* d_out, const int64_t* ids, int64_t n, int64_t D,
                           int64_t num_rows, cudaStream_t stream);

// Throws genrec::Error naming the first id outside [0, num_rows) and its position, as the CPU
// ops do. Synchronises `stream`.
void embedding_check_ids(const int64_t* ids, int64_t n, int64_t num_rows, cudaStream_t stream);

}  // namespace genrec::cuda
