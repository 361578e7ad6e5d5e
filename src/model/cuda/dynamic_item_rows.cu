#include "ops/cuda/kernel_util.cuh"  // first: it configures fmt for nvcc

#include "model/cuda/dynamic_item_rows.h"

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#include "embedding/cuda/bucket_probe.cuh"
#include "model/item_embeddings.h"

namespace genrec::cuda {
namespace {

using detail::grid_for;
using detail::kThreads;
using detail::kWarpsPerBlock;

__device__ __forceinline__ int64_t warp_index() {
  return static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
}

unsigned warp_blocks(int64_t warps) {
  return static_cast<unsigned>(detail::ceil_div(warps, kWarpsPerBlock));
}

// At least n elements (contents discarded when it grows).
template <typename T>
T* grow(DeviceBuffer<T>& buffer, int64_t n, cudaStream_t stream) {
  if (buffer.size() < n) buffer = DeviceBuffer<T>(n, stream);
  return buffer.data();
}

// At least n elements, keeping the first `used` (at least doubling, so appends stay cheap).
template <typename T>
T* grow_keeping(DeviceBuffer<T>& buffer, int64_t n, int64_t used, cudaStream_t stream) {
  if (buffer.size() < n) {
    DeviceBuffer<T> bigger(std::max(n, 2 * buffer.size()), stream);
    if (used > 0) {
      GENREC_CUDA_CHECK(cudaMemcpyAsync(bigger.data(), buffer.data(), sizeof(T) * used,
                                        cudaMemcpyDeviceToDevice, stream));
    }
    buffer = std::move(bigger);
  }
  return buffer.data();
}

// out[i] = the initial row of ids[i]: the table's initializer, element for element.
__global__ void initial_rows_kernel(float* out, const int64_t* ids, int64_t n, int64_t D,
                                    table::InitParams init) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n * D;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = table::init_value(init, static_cast<uint64_t>(ids[i / D]), i % D);
  }
}

// failures[0] += the rows a training lookup evicted, failures[1] += the ids it did not store.
__global__ void count_failures_kernel(unsigned long long* failures, const uint8_t* stored,
                                      int64_t n, const int64_t* evicted) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    if (!stored[i]) atomicAdd(failures + 1, 1ull);
  }
  if (blockIdx.x == 0 && threadIdx.x == 0 && *evicted > 0) {
    atomicAdd(failures, static_cast<unsigned long long>(*evicted));
  }
}

__global__ void iota_kernel(int64_t* out, int64_t n, int64_t first) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = first + i;
  }
}

__global__ void tokens_kernel(int32_t* tokens, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    tokens[i] = static_cast<int32_t>(i);
  }
}

// heads[j] = 1 where sorted id j starts a run of equal ids.
__global__ void run_heads_kernel(int32_t* heads, const uint64_t* sorted, int64_t n) {
  for (int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; j < n;
       j += int64_t{gridDim.x} * blockDim.x) {
    heads[j] = j == 0 || sorted[j] != sorted[j - 1];
  }
}

// The warp of a run's first sorted position sums the run's gradient rows in token order, in
// float64, into distinct row slots[j] - 1 (slots: inclusive sums of the heads).
__global__ void sum_runs_kernel(uint64_t* keys_out, float* grads_out, const uint64_t* sorted,
                                const int32_t* tokens, const int32_t* slots, const float* grads,
                                int64_t n, int64_t D) {
  const int64_t j = warp_index();
  const int lane = threadIdx.x % 32;
  if (j >= n) return;
  const uint64_t key = sorted[j];
  if (j > 0 && sorted[j - 1] == key) return;
  int64_t end = j + 1;
  while (end < n && sorted[end] == key) ++end;
  const int64_t r = slots[j] - 1;
  if (lane == 0) keys_out[r] = key;
  for (int64_t c = lane; c < D; c += 32) {
    double sum = 0.0;
    for (int64_t k = j; k < end; ++k) sum += grads[static_cast<int64_t>(tokens[k]) * D + c];
    grads_out[r * D + c] = static_cast<float>(sum);
  }
}

struct RowAdam {
  float lr, beta1, beta2, eps;
};

// One Adam step of each row (a warp per row), as SparseOptimizer with AdamStepMode::kPerRow:
// the row's update count (state 2D) goes up by one and gives the bias correction, computed in
// double as the CPU does; the elements follow cuda::adam_update's operation order with
// round-to-nearest intrinsics (no FMA contraction), the CPU's float arithmetic. No weight
// decay: the item rows have none, static or dynamic.
__global__ void row_adam_kernel(float* values, float* states, const float* grads, int64_t rows,
                                int64_t D, RowAdam a) {
  const int64_t r = warp_index();
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  float* w = values + r * D;
  float* m = states + r * (2 * D + 1);
  float* v = m + D;
  const float* g = grads + r * D;
  const float count = __fadd_rn(m[2 * D], 1.0f);  // saturates at 2^24, as on the CPU
  __syncwarp();  // every lane has read the count before lane 0 writes it
  const double step = static_cast<double>(static_cast<int64_t>(count));
  const double bias1 = 1.0 - pow(static_cast<double>(a.beta1), step);
  const double bias2 = 1.0 - pow(static_cast<double>(a.beta2), step);
  const float step_size = static_cast<float>(a.lr / bias1);
  const float inv_sqrt_bias2 = static_cast<float>(1.0 / sqrt(bias2));
  for (int64_t c = lane; c < D; c += 32) {
    const float gc = g[c];
    const float mi = __fadd_rn(__fmul_rn(a.beta1, m[c]), __fmul_rn(__fsub_rn(1.0f, a.beta1), gc));
    const float vi =
        __fadd_rn(__fmul_rn(a.beta2, v[c]), __fmul_rn(__fmul_rn(__fsub_rn(1.0f, a.beta2), gc), gc));
    m[c] = mi;
    v[c] = vi;
    const float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(vi), inv_sqrt_bias2), a.eps);
    w[c] = __fsub_rn(w[c], __fdiv_rn(__fmul_rn(step_size, mi), denom));
  }
  if (lane == 0) m[2 * D] = count;
}

}  // namespace

DynamicItemRows::DynamicItemRows(const RetrievalConfig& config, cudaStream_t stream)
    : config_(config), stream_(stream), failures_(2, stream) {
  initialize(0);
}

void DynamicItemRows::initialize(uint64_t seed) {
  const TableOptions options = item_table_options(config_, seed);
  host_ = std::make_unique<DynamicTable>(options);
  CudaTableOptions device;
  device.dim = options.dim;
  device.optimizer = options.optimizer;
  device.initializer = options.initializer;
  device.eviction = options.eviction;
  device.log_removals = options.log_removals;
  device.capacity = 2 * config_.num_items;
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream_));  // nothing queued still uses the old slots
  table_.reset();
  table_ = std::make_unique<CudaDynamicTable>(device);
  GENREC_CUDA_CHECK(cudaMemsetAsync(failures_.data(), 0, failures_.bytes(), stream_));
  zero_grad();
}

void DynamicItemRows::download() {
  const TableRows rows = table_->export_rows(0, stream_);
  host_->clear();
  host_->insert_rows(rows);
  host_->set_step(table_->step());
}

void DynamicItemRows::upload() {
  const TableRows rows = host_->export_rows();
  table_->clear(stream_);
  table_->set_step(host_->step());
  const int64_t stored = table_->insert_rows(rows, stream_);
  GENREC_CHECK(stored == rows.size(),
               "dynamic item table: {} of {} rows did not fit the CUDA table ({} slots for {} "
               "items): a 128-slot bucket is full",
               rows.size() - stored, rows.size(), table_->capacity(), config_.num_items);
}

void DynamicItemRows::gather(const int64_t* ids, int64_t n, float* out, bool training) {
  if (n == 0) return;
  const auto* keys = reinterpret_cast<const uint64_t*>(ids);
  if (training) {
    DeviceBuffer<uint8_t> stored(n, stream_);
    DeviceBuffer<uint64_t> evicted_keys(n, stream_);
    DeviceBuffer<int64_t> evicted(1, stream_);
    GENREC_CUDA_CHECK(cudaMemsetAsync(evicted.data(), 0, evicted.bytes(), stream_));
    EvictedRows sink;
    sink.keys = evicted_keys.data();
    sink.count = evicted.data();
    table_->find_or_insert(keys, n, out, stored.data(), stream_, nullptr, &sink);
    count_failures_kernel<<<grid_for(n, kThreads), kThreads, 0, stream_>>>(
        failures_.data(), stored.data(), n, evicted.data());
    GENREC_CUDA_LAUNCH_CHECK("dynamic item rows: lookup failures");
    return;
  }
  const Initializer& init = table_->options().initializer;
  initial_rows_kernel<<<grid_for(n * config_.dim, kThreads), kThreads, 0, stream_>>>(
      out, ids, n, config_.dim, table::InitParams{init.kind, init.scale, init.seed, 0.0f});
  GENREC_CUDA_LAUNCH_CHECK("dynamic item rows: initial rows");
  table_->find(keys, n, out, nullptr, stream_);  // present ids overwrite their initial rows
}

float* DynamicItemRows::gradient_rows(const int64_t* ids, int64_t n) {
  GENREC_CHECK(distinct_ < 0, "item gradients scattered after the step's norm or update");
  const int64_t D = config_.dim;
  int64_t* pending_ids = grow_keeping(pending_ids_, pending_ + n, pending_, stream_);
  float* pending_grads = grow_keeping(pending_grads_, (pending_ + n) * D, pending_ * D, stream_);
  if (n > 0) {
    GENREC_CUDA_CHECK(cudaMemcpyAsync(pending_ids + pending_, ids, sizeof(int64_t) * n,
                                      cudaMemcpyDeviceToDevice, stream_));
  }
  float* rows = pending_grads + pending_ * D;
  pending_ += n;
  return rows;
}

const float* DynamicItemRows::all_rows() {
  const int64_t V = config_.num_items;
  if (all_ids_.size() == 0) {
    all_ids_ = DeviceBuffer<int64_t>(V, stream_);
    iota_kernel<<<grid_for(V, kThreads), kThreads, 0, stream_>>>(all_ids_.data(), V, 1);
    GENREC_CUDA_LAUNCH_CHECK("dynamic item rows: item ids");
  }
  float* rows = grow(all_rows_, V * config_.dim, stream_);
  gather(all_ids_.data(), V, rows, /*training=*/false);
  return rows;
}

void DynamicItemRows::zero_grad() {
  pending_ = 0;
  distinct_ = -1;
}

int64_t DynamicItemRows::aggregate() {
  if (distinct_ >= 0) return distinct_;
  const int64_t n = pending_, D = config_.dim;
  GENREC_CHECK(n <= std::numeric_limits<int32_t>::max(),
               "dynamic item rows: {} row gradients exceed the 2^31 a single sort handles", n);
  int32_t distinct = 0;
  // Kept to the end: the copy of the count reads them.
  DeviceBuffer<uint64_t> sorted(n, stream_);
  DeviceBuffer<int32_t> tokens_in(n, stream_), tokens(n, stream_), heads(n, stream_),
      slots(n, stream_);
  if (n > 0) {
    tokens_kernel<<<grid_for(n, kThreads), kThreads, 0, stream_>>>(tokens_in.data(), n);
    GENREC_CUDA_LAUNCH_CHECK("dynamic item rows: token indices");
    // Ids lie in 1..V: sorting bit_width(V) bits orders them all.
    const int end_bit = std::bit_width(static_cast<uint64_t>(config_.num_items));
    const auto* ids = reinterpret_cast<const uint64_t*>(pending_ids_.data());
    const int items = static_cast<int>(n);
    size_t sort_bytes = 0, scan_bytes = 0;
    GENREC_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, ids, sorted.data(),
                                                      tokens_in.data(), tokens.data(), items, 0,
                                                      end_bit, stream_));
    GENREC_CUDA_CHECK(cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, heads.data(), slots.data(),
                                                    items, stream_));
    DeviceBuffer<uint8_t> temp(static_cast<int64_t>(std::max({sort_bytes, scan_bytes, size_t{1}})),
                               stream_);
    GENREC_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data(), sort_bytes, ids, sorted.data(),
                                                      tokens_in.data(), tokens.data(), items, 0,
                                                      end_bit, stream_));
    run_heads_kernel<<<grid_for(n, kThreads), kThreads, 0, stream_>>>(heads.data(), sorted.data(),
                                                                      n);
    GENREC_CUDA_LAUNCH_CHECK("dynamic item rows: run heads");
    GENREC_CUDA_CHECK(cub::DeviceScan::InclusiveSum(temp.data(), scan_bytes, heads.data(),
                                                    slots.data(), items, stream_));
    sum_runs_kernel<<<warp_blocks(n), kThreads, 0, stream_>>>(
        grow(keys_, n, stream_), grow(grads_, n * D, stream_), sorted.data(), tokens.data(),
        slots.data(), pending_grads_.data(), n, D);
    GENREC_CUDA_LAUNCH_CHECK("dynamic item rows: gradient sums");
    GENREC_CUDA_CHECK(cudaMemcpyAsync(&distinct, slots.data() + n - 1, sizeof(distinct),
                                      cudaMemcpyDeviceToHost, stream_));
  }
  unsigned long long failures[2] = {0, 0};
  GENREC_CUDA_CHECK(cudaMemcpyAsync(failures, failures_.data(), sizeof(failures),
                                    cudaMemcpyDeviceToHost, stream_));
  GENREC_CUDA_CHECK(cudaStreamSynchronize(stream_));
  GENREC_CHECK(failures[0] == 0 && failures[1] == 0,
               "dynamic item table: training lookups evicted {} rows and could not store {} ids: "
               "a 128-slot bucket of the CUDA table ({} slots for {} items) filled up",
               failures[0], failures[1], table_->capacity(), config_.num_items);
  distinct_ = distinct;
  return distinct_;
}

void DynamicItemRows::step(const cpu::AdamConfig& adam, float lr, int64_t global_step) {
  const int64_t m = aggregate(), D = config_.dim;
  table_->set_step(static_cast<uint64_t>(global_step));
  if (m == 0) return;
  DeviceBuffer<float> values(m * D, stream_), states(m * table_->state_dim(), stream_);
  DeviceBuffer<uint64_t> scores(m, stream_);
  // Every touched id is present: aggregate() has checked that no lookup evicted or dropped one.
  table_->find(keys_.data(), m, values.data(), nullptr, stream_, states.data(), scores.data());
  row_adam_kernel<<<warp_blocks(m), kThreads, 0, stream_>>>(
      values.data(), states.data(), grads_.data(), m, D,
      RowAdam{lr, adam.beta1, adam.beta2, adam.eps});
  GENREC_CUDA_LAUNCH_CHECK("dynamic item rows: row adam");
  // The found scores go back unchanged: an update is no access (update_rows on the CPU); without
  // stamps insert_rows stamps the rows with the step, as update_rows does.
  table_->insert_rows(keys_.data(), values.data(), states.data(), scores.data(), m, stream_);
}

}  // namespace genrec::cuda
