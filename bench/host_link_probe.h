// The host link's roofline for the HBM + host table rows (see host_link_probe.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace genrec::bench {

// Prints a table: DMA copy bandwidth and random 256-byte row reads and writes through mapped
// host memory of 1, 4, 16, ... GiB up to max_bytes, for cudaHostAlloc memory and for registered
// memory on transparent huge pages.
void print_host_link_probe(int64_t max_bytes, cudaStream_t stream);

}  // namespace genrec::bench
