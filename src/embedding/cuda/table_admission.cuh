// The admission step of CudaDynamicTable::find_or_insert (include from .cu files only): between
// the lookup kernel, which leaves absent keys pending, and the insert kernel, which inserts the
// pending ones, the filter refuses the keys it has not yet seen often enough.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "embedding/cuda/bucket_probe.cuh"
#include "embedding/cuda/cuda_counting_filter.h"

namespace genrec::cuda::table {

// Records the pending occurrences of keys[0, n) as sightings
// (CudaCountingFilter::record_until_admitted), then refuses every pending occurrence whose key's
// estimate, after all of the batch's sightings, is below the threshold: pending[i] = 0,
// stored[i] = 0 (stored may be null) and values_out row i (dim floats) = the initializer's row.
// Queues nothing for threshold 1.
void admit_pending(CudaCountingFilter& filter, const uint64_t* keys, int64_t n, uint8_t* pending,
                   uint8_t* stored, float* values_out, int64_t dim, const InitParams& init,
                   cudaStream_t stream);

}  // namespace genrec::cuda::table
