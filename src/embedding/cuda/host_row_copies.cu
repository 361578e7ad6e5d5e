#include "core/cuda/cuda_check.h"  // first: it configures fmt for nvcc

#include "embedding/cuda/host_row_copies.h"

#include <cub/device/device_radix_sort.cuh>

#include <bit>

#include "embedding/cuda/bucket_probe.cuh"

namespace genrec::cuda {
namespace {

using table::for_each_key;
using table::kThreads;
using table::kTilesPerBlock;
using table::Tile;

// One tile per note in row order; the sort put the kNoHostRow notes last.
__global__ void __launch_bounds__(kThreads)
    copy_host_rows_kernel(TableView t, const uint64_t* rows, const uint32_t* occurrences, int64_t n,
                          HostRowCopy c) {
  for_each_key(n, [&](const Tile& tile, int64_t k) {
    uint64_t r = rows[k];
    if (r == kNoHostRow) return;
    const bool is_new = (r & kNewHostRow) != 0;
    const bool demoted = (r & kDemotedHostRow) != 0;
    r &= ~(kNewHostRow | kDemotedHostRow);
    const int64_t i = occurrences[k];
    float* row = t.host_rows + static_cast<int64_t>(r) * t.stride;
    if (demoted) {
      const int64_t row_dim = c.dim + c.state_dim;
      table::tile_copy<false>(tile, row, c.demoted + i * row_dim, row_dim);
      return;
    }
    if (is_new) {  // the initial state; the values follow
      table::tile_init_row(tile, table::InitParams{.state0 = c.state0}, 0, row, 0, row + c.dim,
                           c.state_dim);
    }
    if (c.values_in != nullptr) {
      const uint64_t mark = t.slots[table::slot_of_host_row(t, r)].mark;
      if (mark != table::mark_of(c.batch, i)) return;
      table::tile_copy<false>(tile, row, c.values_in + i * c.dim, c.dim);
      return;
    }
    if (is_new) {
      table::tile_copy<false>(tile, row, c.values_out + i * c.dim, c.dim);
      return;
    }
    table::tile_copy<false>(tile, c.values_out + i * c.dim, row, c.dim);
    if (c.states_out != nullptr) {
      table::tile_copy<false>(tile, c.states_out + i * c.state_dim, row + c.dim, c.state_dim);
    }
  });
}

}  // namespace

HostRowCopies::HostRowCopies(int64_t n, cudaStream_t stream)
    : n_(n),
      rows_(n, stream),
      sorted_rows_(n, stream),
      occurrences_(n, stream),
      sorted_occurrences_(n, stream) {}

void HostRowCopies::run(const TableView& t, int64_t host_slots, const HostRowCopy& copy,
                        cudaStream_t stream) {
  if (n_ == 0) return;
  // Row indices are below host_slots, so end_bit bits order them, and kNoHostRow (all ones)
  // after them.
  const int end_bit = std::bit_width(static_cast<uint64_t>(host_slots));
  size_t temp_bytes = 0;
  GENREC_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, temp_bytes, rows_.data(), sorted_rows_.data(), occurrences_.data(),
      sorted_occurrences_.data(), n_, 0, end_bit, stream));
  DeviceBuffer<uint8_t> temp(static_cast<int64_t>(temp_bytes), stream);
  GENREC_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      temp.data(), temp_bytes, rows_.data(), sorted_rows_.data(), occurrences_.data(),
      sorted_occurrences_.data(), n_, 0, end_bit, stream));
  const int64_t blocks = (n_ + kTilesPerBlock - 1) / kTilesPerBlock;
  copy_host_rows_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      t, sorted_rows_.data(), sorted_occurrences_.data(), n_, copy);
  GENREC_CUDA_LAUNCH_CHECK("dynamic table host rows");
}

}  // namespace genrec::cuda
