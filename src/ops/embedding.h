// Embedding table access: gather rows by id, and scatter-add row gradients back.
#pragma once

#include <cstdint>

namespace genrec::cpu {

// out[i] = table[ids[i]] for i < n; rows of D floats; every id must be in [0, num_rows).
void embedding_gather(float* out, const float* table, const int64_t* ids, int64_t n, int64_t D,
                      int64_t num_rows);

// d_table[ids[i]] += d_out[i]; duplicate ids accumulate. Deterministic (no order dependence
// beyond a fixed summation order by i).
void embedding_scatter_add(float* d_table, const float* d_out, const int64_t* ids, int64_t n,
                           int64_t D, int64_t num_rows);

}  // namespace genrec::cpu
