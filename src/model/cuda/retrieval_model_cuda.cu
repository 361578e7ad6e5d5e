// The CUDA retrieval model: the CPU model's computation (model/retrieval_model.cpp) step for step
// in mixed precision. Master weights, gradients, Adam moments, LayerNorm statistics, the final
// normalisation and the loss are fp32; activations and the GEMM weights are bf16 on the tensor
// cores with fp32 accumulation. Dropout masks and negative samples come from the same Philox
// streams as on the CPU, so one step on either device sees the same randomness. The item rows are
// the parameter item_embedding, or with model.item_embeddings: dynamic a CUDA table with sparse
// Adam (model/cuda/dynamic_item_rows.h).
#include "core/cuda/cuda_check.h"  // first: it configures fmt for nvcc

#include <cuda_bf16.h>

#include <cmath>

#include "core/cuda/caching_allocator.h"
#include "model/cuda/dynamic_item_rows.h"
#include "model/retrieval_model.h"
#include "model/retrieval_randomness.h"
#include "ops/cuda/adam.h"
#include "ops/cuda/convert.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/embedding.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/hstu_attention.h"
#include "ops/cuda/hstu_attention_fused.h"
#include "ops/cuda/layer_norm.h"
#include "ops/cuda/pointwise.cuh"
#include "ops/cuda/sampled_softmax.h"
#include "ops/cuda/topk.h"

namespace genrec {
namespace {

using bf16 = __nv_bfloat16;
using cuda::DeviceBuffer;
using cuda::detail::from_float;
using cuda::detail::grid_for;
using cuda::detail::kThreads;
using cuda::detail::to_float;

// x0[t] = E[item[t]] * scale + P[position[t]], stored as bf16. items: the row of each token in
// item_rows, or null when item_rows holds the tokens' rows in order (a dynamic table's lookup).
__global__ void embed_input_kernel(bf16* x0, const float* item_rows, const float* positions_table,
                                   const int64_t* items, const int64_t* positions, int64_t T,
                                   int64_t D, float scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < T * D;
       i += int64_t{gridDim.x} * blockDim.x) {
    int64_t t = i / D, c = i % D;
    const int64_t row = items != nullptr ? items[t] : t;
    float e = item_rows[row * D + c] * scale + positions_table[positions[t] * D + c];
    x0[i] = __float2bfloat16_rn(e);
  }
}

// At least n elements (contents discarded when it grows): activations sized by the largest batch.
template <typename T>
T* grow(DeviceBuffer<T>& buffer, int64_t n) {
  if (buffer.size() < n) buffer = DeviceBuffer<T>(n);
  return buffer.data();
}

struct Add {
  __device__ float operator()(float a, float b) const { return a + b; }
};

// y = float(x) * scale: a dynamic table's input-row gradients from the bf16 backward.
__global__ void scale_to_float_kernel(float* y, const bf16* x, float scale, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    y[i] = __bfloat162float(x[i]) * scale;
  }
}

template <typename T>
__global__ void scale_inplace_kernel(T* x, float scale, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    x[i] = from_float<T>(to_float(x[i]) * scale);
  }
}

// out[b] = in[rows[b]] for B rows of D floats.
__global__ void gather_rows_kernel(float* out, const float* in, const int64_t* rows, int64_t B,
                                   int64_t D) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < B * D;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = in[rows[i / D] * D + i % D];
  }
}

// *sum += Σ x², one atomic per block.
__global__ void sum_squares_kernel(float* sum, const float* x, int64_t n) {
  float local = 0.0f;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    local += x[i] * x[i];
  }
  local = cuda::detail::warp_sum(local);
  __shared__ float warps[32];
  if (threadIdx.x % 32 == 0) warps[threadIdx.x / 32] = local;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < blockDim.x / 32; ++w) total += warps[w];
    atomicAdd(sum, total);
  }
}

// y += x, in bf16 storage with fp32 arithmetic.
void add_inplace(bf16* y, const bf16* x, int64_t n, cudaStream_t s) {
  cuda::detail::map(y, static_cast<const bf16*>(y), x, n, Add{}, s, "add_inplace");
}

void scale_to_float(float* y, const bf16* x, float scale, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  scale_to_float_kernel<<<grid_for(n, kThreads), kThreads, 0, s>>>(y, x, scale, n);
  GENREC_CUDA_LAUNCH_CHECK("scale_to_float");
}

// *sum += Σ x² over n floats.
void add_sum_squares(float* sum, const float* x, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  sum_squares_kernel<<<grid_for(n, kThreads), kThreads, 0, s>>>(sum, x, n);
  GENREC_CUDA_LAUNCH_CHECK("sum_squares");
}

template <typename T>
void scale_inplace(T* x, float scale, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  scale_inplace_kernel<<<grid_for(n, kThreads), kThreads, 0, s>>>(x, scale, n);
  GENREC_CUDA_LAUNCH_CHECK("scale_inplace");
}

// Activations of one HSTU block, kept from forward for backward.
struct BlockActivations {
  DeviceBuffer<bf16> ln1, pre, uvqk, attn, ln2, gated;
  DeviceBuffer<float> mean1, rstd1, mean2, rstd2;
};

class CudaRetrievalModel : public RetrievalModel {
 public:
  explicit CudaRetrievalModel(const RetrievalConfig& config)
      : RetrievalModel(config), activations_(block_params_.size()) {
    GENREC_CHECK(cuda_available(), "no CUDA device is available for the CUDA model");
    const int64_t n = params_.numel();
    grow(values_, n);
    grow(grads_, n);
    grow(m_, n);
    grow(v_, n);
    grow(values_bf16_, n);
    if (config_.item_embeddings == ItemStore::kDynamic) {
      dynamic_items_ = std::make_unique<cuda::DynamicItemRows>(config_, stream_);
    }
    upload();
  }

  ~CudaRetrievalModel() override { cudaStreamSynchronize(stream_); }

  Device device() const override { return Device::kCUDA; }
  void synchronize() override { GENREC_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

  // The parameters on the host only (upload() pushes them); a dynamic item table restarts empty
  // on the device as well.
  void initialize(uint64_t seed) override {
    RetrievalModel::initialize(seed);
    if (dynamic_items_) dynamic_items_->initialize(seed);
  }

  // The host copy of a dynamic table, current after download().
  DynamicTable* item_table() const override {
    return dynamic_items_ ? dynamic_items_->host_table() : nullptr;
  }

  void zero_grad() override {
    GENREC_CUDA_CHECK(cudaMemsetAsync(grads_.data(), 0, sizeof(float) * params_.numel(), stream_));
    if (dynamic_items_) dynamic_items_->zero_grad();
  }

  void upload() override {
    const int64_t n = params_.numel();
    GENREC_CUDA_CHECK(cudaMemcpyAsync(values_.data(), params_.values().data(), sizeof(float) * n,
                                      cudaMemcpyHostToDevice, stream_));
    GENREC_CUDA_CHECK(cudaMemcpyAsync(m_.data(), params_.adam_m().data(), sizeof(float) * n,
                                      cudaMemcpyHostToDevice, stream_));
    GENREC_CUDA_CHECK(cudaMemcpyAsync(v_.data(), params_.adam_v().data(), sizeof(float) * n,
                                      cudaMemcpyHostToDevice, stream_));
    cuda::float_to_bf16(values_bf16_.data(), values_.data(), n, stream_);
    GENREC_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (dynamic_items_) dynamic_items_->upload();
  }

  void download() override {
    const int64_t n = params_.numel();
    GENREC_CUDA_CHECK(cudaMemcpyAsync(params_.values().data(), values_.data(), sizeof(float) * n,
                                      cudaMemcpyDeviceToHost, stream_));
    GENREC_CUDA_CHECK(cudaMemcpyAsync(params_.adam_m().data(), m_.data(), sizeof(float) * n,
                                      cudaMemcpyDeviceToHost, stream_));
    GENREC_CUDA_CHECK(cudaMemcpyAsync(params_.adam_v().data(), v_.data(), sizeof(float) * n,
                                      cudaMemcpyDeviceToHost, stream_));
    GENREC_CUDA_CHECK(cudaMemcpyAsync(params_.grads().data(), grads_.data(), sizeof(float) * n,
                                      cudaMemcpyDeviceToHost, stream_));
    GENREC_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (dynamic_items_) dynamic_items_->download();
  }

  float train_step(const TokenBatch& batch, uint64_t seed, int64_t step) override {
    const int64_t T = batch.num_tokens(), D = config_.dim, V = config_.num_items;
    validate(batch, /*training=*/true);
    if (T == 0) return 0.0f;
    const uint64_t dropout_seed = step_key(seed, step);
    const std::vector<int64_t> negatives = sample_negatives(config_, batch, dropout_seed);
    const int64_t K = static_cast<int64_t>(negatives.size());
    const int64_t* dev = stage(batch, &negatives);
    const int64_t* targets = dev + targets_at_;
    const int64_t* negs = dev + negatives_at_;
    const bool dynamic = dynamic_items_ != nullptr;
    // Static: rows gathered from the parameter. Dynamic: one training lookup of every id the
    // step reads, targets | negatives | items as staged (the CPU model's order of scatters).
    float* looked_up = nullptr;
    const float* table = nullptr;
    float* d_table = nullptr;
    if (dynamic) {
      looked_up = grow(looked_up_, (2 * T + K) * D);
      dynamic_items_->gather(targets, 2 * T + K, looked_up, /*training=*/true);
    } else {
      table = value(item_table_);
      d_table = grad(item_table_);
    }
    encode(batch, /*training=*/true, dropout_seed, dynamic ? looked_up + (T + K) * D : nullptr);

    float* pos_raw = dynamic ? looked_up : grow(pos_raw_, T * D);
    float* pos = grow(pos_, T * D);
    float* neg_raw = dynamic ? looked_up + T * D : grow(neg_raw_, K * D);
    float* neg = grow(neg_, K * D);
    if (!dynamic) cuda::embedding_gather<float>(pos_raw, table, targets, T, D, V + 1, stream_);
    cuda::l2_normalize_forward<float>(pos, grow(inv_pos_, T), pos_raw, T, D, kEmbeddingNormEps,
                                      stream_);
    if (!dynamic) cuda::embedding_gather<float>(neg_raw, table, negs, K, D, V + 1, stream_);
    cuda::l2_normalize_forward<float>(neg, grow(inv_neg_, K), neg_raw, K, D, kEmbeddingNormEps,
                                      stream_);
    float* probs = grow(probs_, T * (K + 1));
    cuda::sampled_softmax_forward_async(gemm_, grow(loss_, 1), probs, user_.data(), pos, targets,
                                        neg, negs, T, K, D, config_.temperature, stream_);

    float* d_user = grow(d_user_, T * D);
    float* d_pos = grow(d_pos_, T * D);
    float* d_neg = grow(d_neg_, K * D);
    cuda::sampled_softmax_backward(gemm_, d_user, d_pos, d_neg, probs, user_.data(), pos, neg, T, K,
                                   D, config_.temperature, stream_);
    // Dynamic: the row gradients go straight to the table's per-token rows, in lookup order.
    float* d_rows = dynamic ? dynamic_items_->gradient_rows(targets, 2 * T + K) : nullptr;
    float* d_pos_raw = dynamic ? d_rows : grow(d_raw_, std::max(T, K) * D);
    float* d_neg_raw = dynamic ? d_rows + T * D : d_pos_raw;
    cuda::l2_normalize_backward<float>(d_pos_raw, d_pos, pos, inv_pos_.data(), T, D, stream_);
    if (!dynamic) {
      cuda::embedding_scatter_add<float>(d_table, d_pos_raw, targets, T, D, V + 1, stream_);
    }
    cuda::l2_normalize_backward<float>(d_neg_raw, d_neg, neg, inv_neg_.data(), K, D, stream_);
    if (!dynamic) {
      cuda::embedding_scatter_add<float>(d_table, d_neg_raw, negs, K, D, V + 1, stream_);
    }

    float* d_h = grow(d_h_, T * D);
    cuda::l2_normalize_backward<float>(d_h, d_user, user_.data(), inv_user_.data(), T, D, stream_);
    bf16* d_a = grow(d_a_, T * D);
    bf16* d_b = grow(d_b_, T * D);
    cuda::float_to_bf16(d_a, d_h, T * D, stream_);
    for (int64_t l = static_cast<int64_t>(block_params_.size()) - 1; l >= 0; --l) {
      block_backward(l, d_b, d_a, layers_[l].data(), batch, dropout_seed);
      std::swap(d_a, d_b);
    }
    if (config_.dropout > 0.0f) {
      cuda::dropout_backward<bf16>(d_a, d_a, T * D, config_.dropout, dropout_seed,
                                   kInputDropoutStream, stream_);
    }
    float* d_positions = grads_.data() + params_.info(position_table_).offset;
    cuda::embedding_scatter_add<bf16>(d_positions, d_a, dev + positions_at_, T, D, config_.max_len,
                                      stream_);
    const float scale = std::sqrt(static_cast<float>(D));
    if (dynamic) {
      scale_to_float(d_rows + (T + K) * D, d_a, scale, T * D, stream_);
    } else {
      scale_inplace<bf16>(d_a, scale, T * D, stream_);
      cuda::embedding_scatter_add<bf16>(d_table, d_a, dev + items_at_, T, D, V + 1, stream_);
    }

    float loss = 0.0f;
    GENREC_CUDA_CHECK(
        cudaMemcpyAsync(&loss, loss_.data(), sizeof(float), cudaMemcpyDeviceToHost, stream_));
    GENREC_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return loss;
  }

  void optimizer_step(const cpu::AdamConfig& adam, float lr, float grad_clip) override {
    const int64_t n = params_.numel();
    // A dynamic table's row gradients summed per id: with the dense ones in the global norm.
    const int64_t rows = dynamic_items_ ? dynamic_items_->aggregate() * config_.dim : 0;
    float* row_grads = dynamic_items_ ? dynamic_items_->grads() : nullptr;
    if (grad_clip > 0.0f) {
      float* sum = grow(norm_, 1);
      GENREC_CUDA_CHECK(cudaMemsetAsync(sum, 0, sizeof(float), stream_));
      add_sum_squares(sum, grads_.data(), n, stream_);
      add_sum_squares(sum, row_grads, rows, stream_);
      float host_sum = 0.0f;
      GENREC_CUDA_CHECK(
          cudaMemcpyAsync(&host_sum, sum, sizeof(float), cudaMemcpyDeviceToHost, stream_));
      GENREC_CUDA_CHECK(cudaStreamSynchronize(stream_));
      float norm = std::sqrt(host_sum);
      if (norm > grad_clip) {
        scale_inplace<float>(grads_.data(), grad_clip / norm, n, stream_);
        scale_inplace<float>(row_grads, grad_clip / norm, rows, stream_);
      }
    }
    params_.set_adam_steps(params_.adam_steps() + 1);
    for (int i = 0; i < params_.count(); ++i) {
      const ParameterInfo& p = params_.info(i);
      cpu::AdamConfig c = adam;
      c.lr = lr;
      if (!p.decay) c.weight_decay = 0.0f;
      cuda::adam_update(values_.data() + p.offset, grads_.data() + p.offset, m_.data() + p.offset,
                        v_.data() + p.offset, p.numel, c, params_.adam_steps(),
                        values_bf16_.data() + p.offset, stream_);
    }
    if (dynamic_items_) dynamic_items_->step(adam, lr, params_.adam_steps());
  }

  void encode_users(const TokenBatch& batch, float* out) override {
    const int64_t B = batch.batch_size(), D = config_.dim;
    float* queries = last_user_rows(batch);
    GENREC_CUDA_CHECK(
        cudaMemcpyAsync(out, queries, sizeof(float) * B * D, cudaMemcpyDeviceToHost, stream_));
    GENREC_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  void rank_targets(const TokenBatch& history, const int64_t* targets, int64_t* ranks) override {
    const int64_t B = history.batch_size(), V = config_.num_items, D = config_.dim;
    float* queries = last_user_rows(history);
    const float* items = normalized_items();
    float* scores = grow(scores_, B * V);
    cuda::gemm<float>(gemm_, false, true, B, V, D, 1.0f, queries, D, items, D, 0.0f, scores, V,
                      stream_);
    std::vector<int64_t> columns(targets, targets + B);
    for (int64_t& c : columns) c -= 1;  // item i is column i - 1
    int64_t* dev = grow(rank_io_, 2 * B);
    GENREC_CUDA_CHECK(
        cudaMemcpyAsync(dev, columns.data(), sizeof(int64_t) * B, cudaMemcpyHostToDevice, stream_));
    cuda::rank_of_target(dev + B, scores, dev, B, V, stream_);
    GENREC_CUDA_CHECK(
        cudaMemcpyAsync(ranks, dev + B, sizeof(int64_t) * B, cudaMemcpyDeviceToHost, stream_));
    GENREC_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  void item_embeddings(std::vector<float>& out) override {
    const int64_t V = config_.num_items, D = config_.dim;
    out.resize(V * D);
    const float* items = normalized_items();
    GENREC_CUDA_CHECK(
        cudaMemcpyAsync(out.data(), items, sizeof(float) * V * D, cudaMemcpyDeviceToHost, stream_));
    GENREC_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

 private:
  const float* value(int id) const { return values_.data() + params_.info(id).offset; }
  const bf16* value_bf16(int id) const { return values_bf16_.data() + params_.info(id).offset; }
  float* grad(int id) { return grads_.data() + params_.info(id).offset; }

  // Copies the batch's integer columns to the device in one transfer; returns the device base.
  // Layout: offsets [B+1] | timestamps [T] | positions [T] | targets [T] | negatives | items [T]:
  // the ids a dynamic table looks up in training are one run, in the CPU model's scatter order.
  const int64_t* stage(const TokenBatch& batch, const std::vector<int64_t>* negatives) {
    const int64_t B = batch.batch_size(), T = batch.num_tokens();
    host_ints_.clear();
    host_ints_.insert(host_ints_.end(), batch.offsets.begin(), batch.offsets.end());
    timestamps_at_ = B + 1;
    host_ints_.insert(host_ints_.end(), batch.timestamps.begin(), batch.timestamps.end());
    positions_at_ = timestamps_at_ + T;
    max_length_ = 0;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t begin = batch.offsets[b], end = batch.offsets[b + 1];
      max_length_ = std::max(max_length_, end - begin);
      for (int64_t t = begin; t < end; ++t) host_ints_.push_back(t - begin);
    }
    targets_at_ = positions_at_ + T;
    host_ints_.insert(host_ints_.end(), batch.targets.begin(), batch.targets.end());
    negatives_at_ = targets_at_ + static_cast<int64_t>(batch.targets.size());
    if (negatives) host_ints_.insert(host_ints_.end(), negatives->begin(), negatives->end());
    items_at_ = static_cast<int64_t>(host_ints_.size());
    host_ints_.insert(host_ints_.end(), batch.items.begin(), batch.items.end());
    int64_t* dev = grow(batch_ints_, static_cast<int64_t>(host_ints_.size()));
    GENREC_CUDA_CHECK(cudaMemcpyAsync(dev, host_ints_.data(), sizeof(int64_t) * host_ints_.size(),
                                      cudaMemcpyHostToDevice, stream_));
    return dev;
  }

  // Residual stream layers_[0..L] and the normalised user vectors user_ [T, D] (fp32).
  // token_rows: the tokens' item rows [T, D] when train_step has looked them up in a dynamic
  // table; null: read here, from the parameter or from the dynamic table without inserting.
  void encode(const TokenBatch& batch, bool training, uint64_t dropout_seed,
              const float* token_rows) {
    const int64_t T = batch.num_tokens(), D = config_.dim;
    const int64_t* dev = batch_ints_.data();
    layers_.resize(block_params_.size() + 1);
    for (auto& layer : layers_) grow(layer, T * D);
    bf16* x0 = layers_[0].data();
    const float* item_rows = token_rows;
    const int64_t* item_ids = nullptr;
    if (item_rows == nullptr && dynamic_items_) {
      float* rows = grow(looked_up_, T * D);
      dynamic_items_->gather(dev + items_at_, T, rows, training);
      item_rows = rows;
    } else if (item_rows == nullptr) {
      item_rows = value(item_table_);
      item_ids = dev + items_at_;
    }
    if (T > 0) {
      embed_input_kernel<<<grid_for(T * D, kThreads), kThreads, 0, stream_>>>(
          x0, item_rows, value(position_table_), item_ids, dev + positions_at_, T, D,
          std::sqrt(static_cast<float>(D)));
      GENREC_CUDA_LAUNCH_CHECK("embed_input");
    }
    if (training && config_.dropout > 0.0f) {
      cuda::dropout_forward<bf16>(x0, x0, T * D, config_.dropout, dropout_seed, kInputDropoutStream,
                                  stream_);
    }
    for (size_t l = 0; l < block_params_.size(); ++l) {
      block_forward(l, layers_[l + 1].data(), layers_[l].data(), batch, training, dropout_seed);
    }
    float* h = grow(d_h_, T * D);  // scratch until the backward needs it
    cuda::bf16_to_float(h, layers_.back().data(), T * D, stream_);
    cuda::l2_normalize_forward<float>(grow(user_, T * D), grow(inv_user_, T), h, T, D,
                                      kEmbeddingNormEps, stream_);
  }

  cpu::HstuAttentionShape attention_shape() const {
    cpu::HstuAttentionShape s;
    s.num_heads = block_config_.num_heads;
    s.dim_qk = block_config_.dim_qk;
    s.dim_v = block_config_.dim_v;
    s.alpha = 1.0f / std::sqrt(static_cast<float>(block_config_.dim_qk));
    s.inv_n = 1.0f / static_cast<float>(config_.max_len);
    s.ld_q = s.ld_k = s.ld_v = hstu_uvqk_width(block_config_);
    return s;
  }

  cpu::HstuRelativeBias relative_bias(const HstuBlockParams& ids) const {
    cpu::HstuRelativeBias b;
    if (ids.pos_bias >= 0) {
      b.position = value(ids.pos_bias);
      b.num_positions = block_config_.num_positions;
    }
    if (ids.time_bias >= 0) {
      b.time = value(ids.time_bias);
      b.num_time_buckets = block_config_.num_time_buckets;
      b.timestamps = batch_ints_.data() + timestamps_at_;
    }
    return b;
  }

  void block_forward(size_t l, bf16* out, const bf16* x, const TokenBatch& batch, bool training,
                     uint64_t dropout_seed) {
    const HstuBlockParams& ids = block_params_[l];
    BlockActivations& a = activations_[l];
    const int64_t T = batch.num_tokens(), D = config_.dim, P = hstu_uvqk_width(block_config_);
    const int64_t hv = block_config_.num_heads * block_config_.dim_v;
    const int64_t hqk = block_config_.num_heads * block_config_.dim_qk;
    const float eps = block_config_.layer_norm_eps;
    bf16* ln1 = grow(a.ln1, T * D);
    bf16* pre = grow(a.pre, T * P);
    bf16* uvqk = grow(a.uvqk, T * P);
    bf16* attn = grow(a.attn, T * hv);
    bf16* ln2 = grow(a.ln2, T * hv);
    bf16* gated = grow(a.gated, T * hv);
    cuda::layer_norm_forward<bf16>(ln1, grow(a.mean1, T), grow(a.rstd1, T), x, value(ids.ln1_w),
                                   value(ids.ln1_b), T, D, eps, stream_);
    cuda::linear_forward<bf16>(gemm_, pre, ln1, value_bf16(ids.w_uvqk), value(ids.b_uvqk), T, D, P,
                               stream_);
    cuda::silu_forward<bf16>(uvqk, pre, T * P, stream_);
    const bf16 *q = uvqk + 2 * hv, *k = uvqk + 2 * hv + hqk, *v = uvqk + hv;
    if (cuda::hstu_fused_supported(attention_shape(), batch.batch_size(), q, k, v)) {
      cuda::hstu_attention_fused_forward<bf16>(attn, q, k, v, batch_ints_.data(),
                                               batch.batch_size(), T, attention_shape(),
                                               relative_bias(ids), {}, max_length_, stream_);
    } else {
      cuda::hstu_attention_forward<bf16>(attn, q, k, v, batch_ints_.data(), batch.batch_size(),
                                         attention_shape(), relative_bias(ids), max_length_,
                                         stream_);
    }
    cuda::layer_norm_forward<bf16>(ln2, grow(a.mean2, T), grow(a.rstd2, T), attn, nullptr, nullptr,
                                   T, hv, eps, stream_);
    cuda::gate_forward<bf16>(gated, ln2, uvqk, P, T, hv, stream_);
    if (training && block_config_.dropout > 0.0f) {
      cuda::dropout_forward<bf16>(gated, gated, T * hv, block_config_.dropout, dropout_seed, l,
                                  stream_);
    }
    cuda::linear_forward<bf16>(gemm_, out, gated, value_bf16(ids.w_out), value(ids.b_out), T, hv, D,
                               stream_);
    add_inplace(out, x, T * D, stream_);
  }

  void block_backward(size_t l, bf16* d_x, const bf16* d_out, const bf16* x,
                      const TokenBatch& batch, uint64_t dropout_seed) {
    const HstuBlockParams& ids = block_params_[l];
    BlockActivations& a = activations_[l];
    const int64_t T = batch.num_tokens(), D = config_.dim, P = hstu_uvqk_width(block_config_);
    const int64_t hv = block_config_.num_heads * block_config_.dim_v;
    const int64_t hqk = block_config_.num_heads * block_config_.dim_qk;
    bf16* d_gated = grow(d_gated_, T * hv);
    bf16* d_ln2 = grow(d_ln2_, T * hv);
    bf16* d_attn = grow(d_attn_, T * hv);
    bf16* d_uvqk = grow(d_uvqk_, T * P);
    bf16* d_ln1 = grow(d_ln1_, T * D);
    const bf16* uvqk = a.uvqk.data();
    cuda::linear_backward<bf16>(gemm_, d_gated, grad(ids.w_out), grad(ids.b_out), d_out,
                                a.gated.data(), value_bf16(ids.w_out), T, hv, D, stream_);
    if (block_config_.dropout > 0.0f) {
      cuda::dropout_backward<bf16>(d_gated, d_gated, T * hv, block_config_.dropout, dropout_seed, l,
                                   stream_);
    }
    cuda::gate_backward<bf16>(d_ln2, d_uvqk, d_gated, a.ln2.data(), uvqk, P, T, hv, stream_);
    cuda::layer_norm_backward<bf16>(d_attn, nullptr, nullptr, d_ln2, a.attn.data(), nullptr,
                                    a.mean2.data(), a.rstd2.data(), T, hv, stream_);
    const bf16 *q = uvqk + 2 * hv, *k = uvqk + 2 * hv + hqk, *v = uvqk + hv;
    float* d_pos = ids.pos_bias >= 0 ? grad(ids.pos_bias) : nullptr;
    float* d_time = ids.time_bias >= 0 ? grad(ids.time_bias) : nullptr;
    if (cuda::hstu_fused_supported(attention_shape(), batch.batch_size(), q, k, v)) {
      cuda::hstu_attention_fused_backward<bf16>(d_uvqk + 2 * hv, d_uvqk + 2 * hv + hqk, d_uvqk + hv,
                                                d_pos, d_time, d_attn, q, k, v, batch_ints_.data(),
                                                batch.batch_size(), T, attention_shape(),
                                                relative_bias(ids), {}, max_length_, stream_);
    } else {
      cuda::hstu_attention_backward<bf16>(d_uvqk + 2 * hv, d_uvqk + 2 * hv + hqk, d_uvqk + hv,
                                          d_pos, d_time, d_attn, q, k, v, batch_ints_.data(),
                                          batch.batch_size(), attention_shape(), relative_bias(ids),
                                          max_length_, stream_);
    }
    cuda::silu_backward<bf16>(d_uvqk, d_uvqk, a.pre.data(), T * P, stream_);
    cuda::linear_backward<bf16>(gemm_, d_ln1, grad(ids.w_uvqk), grad(ids.b_uvqk), d_uvqk,
                                a.ln1.data(), value_bf16(ids.w_uvqk), T, D, P, stream_);
    cuda::layer_norm_backward<bf16>(d_x, grad(ids.ln1_w), grad(ids.ln1_b), d_ln1, x,
                                    value(ids.ln1_w), a.mean1.data(), a.rstd1.data(), T, D,
                                    stream_);
    add_inplace(d_x, d_out, T * D, stream_);
  }

  // Encodes `batch` in eval mode and gathers each sequence's last user vector: [B, D] fp32.
  float* last_user_rows(const TokenBatch& batch) {
    const int64_t B = batch.batch_size(), D = config_.dim;
    validate(batch, /*training=*/false);
    for (int64_t b = 0; b < B; ++b) {
      GENREC_CHECK(batch.offsets[b + 1] > batch.offsets[b], "user {} of the batch has no history",
                   b);
    }
    stage(batch, nullptr);
    encode(batch, /*training=*/false, 0, nullptr);
    std::vector<int64_t> last(B);
    for (int64_t b = 0; b < B; ++b) last[b] = batch.offsets[b + 1] - 1;
    int64_t* rows = grow(last_rows_, B);
    GENREC_CUDA_CHECK(
        cudaMemcpyAsync(rows, last.data(), sizeof(int64_t) * B, cudaMemcpyHostToDevice, stream_));
    float* queries = grow(queries_, B * D);
    gather_rows_kernel<<<grid_for(B * D, kThreads), kThreads, 0, stream_>>>(queries, user_.data(),
                                                                            rows, B, D);
    GENREC_CUDA_LAUNCH_CHECK("gather_rows");
    // `last` must outlive the asynchronous copy.
    GENREC_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return queries;
  }

  // L2-normalised item embeddings [V, D] (fp32) for items 1..V.
  const float* normalized_items() {
    const int64_t V = config_.num_items, D = config_.dim;
    float* items = grow(items_, V * D);
    const float* rows = dynamic_items_ ? dynamic_items_->all_rows() : value(item_table_) + D;
    cuda::l2_normalize_forward<float>(items, grow(inv_items_, V), rows, V, D, kEmbeddingNormEps,
                                      stream_);
    return items;
  }

  cudaStream_t stream_ = nullptr;
  cuda::GemmContext gemm_;
  DeviceBuffer<float> values_, grads_, m_, v_;
  DeviceBuffer<bf16> values_bf16_;
  std::vector<BlockActivations> activations_;
  std::vector<DeviceBuffer<bf16>> layers_;
  std::vector<int64_t> host_ints_;
  DeviceBuffer<int64_t> batch_ints_, last_rows_, rank_io_;
  int64_t items_at_ = 0, timestamps_at_ = 0, positions_at_ = 0, targets_at_ = 0, negatives_at_ = 0,
          max_length_ = 0;
  DeviceBuffer<float> user_, inv_user_, pos_raw_, pos_, inv_pos_, neg_raw_, neg_, inv_neg_, probs_,
      loss_, d_user_, d_pos_, d_neg_, d_raw_, d_h_, norm_, queries_, items_, inv_items_, scores_;
  DeviceBuffer<bf16> d_a_, d_b_, d_gated_, d_ln2_, d_attn_, d_uvqk_, d_ln1_;
  std::unique_ptr<cuda::DynamicItemRows> dynamic_items_;  // null: the rows are item_embedding
  DeviceBuffer<float> looked_up_;                         // a dynamic table's looked-up rows
};

}  // namespace

std::unique_ptr<RetrievalModel> make_cuda_retrieval_model(const RetrievalConfig& config) {
  return std::make_unique<CudaRetrievalModel>(config);
}

}  // namespace genrec
