// DynamicItemRows: the CUDA model's item rows under model.item_embeddings: dynamic, the GPU
// counterpart of the CPU model's DynamicItemEmbeddings (model/item_embeddings.h) with the same
// semantics:
// - rows live in a CudaDynamicTable with the CPU table's options (item_table_options: Adam
//   state m, v and the row's update count in the row; the same initial row per (seed, id)).
//   Its slots are fixed at 2V: ids are 1..V, so it never holds more than V rows, and at a
//   load of at most 1/2 a 128-slot bucket practically never fills. The CPU table is unbounded
//   and never evicts, so a training lookup that evicts a row or cannot store an id is an
//   error (raised by the next optimizer step).
// - training lookups find_or_insert; evaluation lookups find and give absent ids their
//   initial rows without inserting.
// - a step's per-token row gradients are kept until the optimizer step, then summed per
//   distinct id by sorting: a stable radix sort of (id, token) pairs over the bits of V, then
//   one warp per run of equal ids adds the run's rows in token order in float64, as the CPU's
//   aggregate_row_gradients does in batch order. Sorting rather than hashing or a dense
//   [V + 1] index: deterministic sums without float atomics, and no per-step state of size V.
// - the sparse Adam step updates the touched rows only, bias-correcting with each row's own
//   update count (SparseOptimizer, AdamStepMode::kPerRow): one find of the rows, one kernel,
//   one insert_rows writing them back.
// - host_table() is the host copy that checkpoints and the trainer read, as params() is for
//   the parameters: download() fills it from the device table, upload() replaces the device
//   table's rows with it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>

#include "core/cuda/caching_allocator.h"
#include "embedding/cuda/cuda_dynamic_table.h"
#include "embedding/dynamic_table.h"
#include "model/retrieval_model.h"
#include "ops/adam.h"

namespace genrec::cuda {

class DynamicItemRows {
 public:
  // Both tables start empty, drawing rows from seed 0 until initialize().
  DynamicItemRows(const RetrievalConfig& config, cudaStream_t stream);

  // Both tables restart empty and draw new rows from `seed`; pending gradients are dropped.
  void initialize(uint64_t seed);
  DynamicTable* host_table() const { return host_.get(); }
  void download();  // host table := the device table's rows and step (synchronizes)
  void upload();    // device table := the host table's rows and step (synchronizes)

  // Rows of the n item ids (device, 1..V) into out [n, D] (device). training: absent ids are
  // inserted; otherwise they read their initial rows and nothing is inserted.
  void gather(const int64_t* ids, int64_t n, float* out, bool training);
  // Room for the row gradients [n, D] (device) of n more ids of this step (device; copied),
  // which the caller writes before the optimizer step.
  float* gradient_rows(const int64_t* ids, int64_t n);
  // The rows of items 1..V, [V, D] (device); valid until the next call.
  const float* all_rows();

  void zero_grad();
  // Sums the step's row gradients per distinct id, once (synchronizes); returns how many
  // distinct ids the step touched. Throws when a training lookup evicted or dropped a row.
  int64_t aggregate();
  float* grads() { return grads_.data(); }  // [aggregate(), D], for the norm and clipping
  // One Adam step at rate `lr` of the touched rows; global_step (from 1) is the table's step.
  void step(const cpu::AdamConfig& adam, float lr, int64_t global_step);

 private:
  RetrievalConfig config_;
  cudaStream_t stream_;
  std::unique_ptr<DynamicTable> host_;
  std::unique_ptr<CudaDynamicTable> table_;
  // Rows evicted and ids left unstored by training lookups since initialize() (device).
  DeviceBuffer<unsigned long long> failures_;
  DeviceBuffer<int64_t> pending_ids_;  // the step's per-token ids and row gradients
  DeviceBuffer<float> pending_grads_;
  int64_t pending_ = 0;
  int64_t distinct_ = -1;          // aggregated ids; -1 until aggregate()
  DeviceBuffer<uint64_t> keys_;    // the distinct ids, in increasing order
  DeviceBuffer<float> grads_;      // their summed gradients
  DeviceBuffer<int64_t> all_ids_;  // 1..V
  DeviceBuffer<float> all_rows_;
};

}  // namespace genrec::cuda
