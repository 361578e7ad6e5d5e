// The refusal kernel reads each estimate once the whole batch is recorded, so every occurrence
// of a key gets the same answer: a key admitted in a batch is admitted for all its occurrences.
#include "core/cuda/cuda_check.h"  // first: it configures fmt for nvcc

#include "embedding/cuda/table_admission.cuh"

#include <algorithm>

namespace genrec::cuda::table {
namespace {

static_assert(kTile >= 16, "one lane per sketch row (num_hashes <= 16)");

__global__ void __launch_bounds__(kThreads)
    refuse_kernel(CountingFilterView f, const uint64_t* keys, int64_t n, uint8_t* pending,
                  uint8_t* stored, float* values_out, int64_t dim, InitParams init) {
  for_each_key(n, [&](const Tile& tile, int64_t i) {
    if (!pending[i]) return;
    const uint64_t key = keys[i];
    const int lane = static_cast<int>(tile.thread_rank());
    uint32_t m =
        lane < f.num_hashes ? filter_counter(f, count_min_index(key, lane, f.mask, f.seed)) : 255u;
    for (int o = kTile / 2; o > 0; o >>= 1) m = min(m, tile.shfl_xor(m, o));
    if (m >= static_cast<uint32_t>(f.threshold)) return;
    if (lane == 0) {  // after the shuffles: every lane has read pending[i]
      pending[i] = 0;
      if (stored != nullptr) stored[i] = 0;
    }
    tile_init_row(tile, init, key, values_out + i * dim, dim, nullptr, 0);
  });
}

}  // namespace

void admit_pending(CudaCountingFilter& filter, const uint64_t* keys, int64_t n, uint8_t* pending,
                   uint8_t* stored, float* values_out, int64_t dim, const InitParams& init,
                   cudaStream_t stream) {
  if (n == 0 || filter.threshold() == 1) return;
  filter.record_until_admitted(keys, n, pending, stream);
  const int64_t blocks = (n + kTilesPerBlock - 1) / kTilesPerBlock;
  const unsigned grid = static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, int64_t{1} << 22));
  refuse_kernel<<<grid, kThreads, 0, stream>>>(filter.view(), keys, n, pending, stored, values_out,
                                               dim, init);
  GENREC_CUDA_LAUNCH_CHECK("dynamic table admission");
}

}  // namespace genrec::cuda::table
