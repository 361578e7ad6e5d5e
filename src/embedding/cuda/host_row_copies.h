// Host rows of a CUDA dynamic table copied in address order. Kernels reach host rows through
// the mapping, where random 256-byte rows spread over 16 GiB move at 7.8 GB/s on an H100 and the
// same rows sorted by address at 43 GB/s (DMA: 55; bench/host_link_probe.cu): random pages miss
// the address translation. So the lookups of a table with host rows note the host rows they
// would copy (HostRowQueue), and copy_host_rows sorts the notes by row and then copies.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/cuda/caching_allocator.h"
#include "embedding/cuda/table_storage.h"

namespace genrec::cuda {

// What occurrence i does with its noted host row r: reads copy row r's values (dim floats) to
// values_out row i and its state (state_dim floats) to states_out row i (optional); writes
// (values_in set) copy values_in row i to row r when the slot's mark names occurrence i (the
// last occurrence of the key in the call, see the batch marks in cuda_dynamic_table.cu). A new
// row (noted with kNewHostRow) gets its initial state (state_dim floats of state0) and its
// values: values_in row i under the same rule as a write, else values_out row i (find_or_insert
// put the initial values there). A demoted row (kDemotedHostRow) is copied whole (dim +
// state_dim floats) from demoted row i.
struct HostRowCopy {
  float* values_out = nullptr;
  float* states_out = nullptr;
  const float* values_in = nullptr;
  const float* demoted = nullptr;
  int64_t dim = 0, state_dim = 0;
  uint32_t batch = 0;   // writes: the call's batch id
  float state0 = 0.0f;  // new rows' initial state
};

// The notes of one call of n occurrences, in buffers from the caching allocator.
class HostRowCopies {
 public:
  HostRowCopies(int64_t n, cudaStream_t stream);

  HostRowQueue queue() { return {rows_.data(), occurrences_.data()}; }
  // Sorts the notes by host row and runs the copies, queued on `stream`; host_slots: the
  // table's number of host rows.
  void run(const TableView& t, int64_t host_slots, const HostRowCopy& copy, cudaStream_t stream);

 private:
  int64_t n_;
  DeviceBuffer<uint64_t> rows_, sorted_rows_;
  DeviceBuffer<uint32_t> occurrences_, sorted_occurrences_;
};

}  // namespace genrec::cuda
