// Fused HSTU attention on the tensor cores (FlashAttention-2 style tiles, no N×N matrix in
// memory), for training (forward and backward) and for inference against a KV cache.
// Same maths and argument conventions as genrec::cpu::hstu_attention_* (ops/hstu_attention.h),
// with 16-bit inputs (bf16 or fp16 for the forward passes, bf16 for the backward) and fp32
// accumulation; all pointers are device pointers,
// including offsets, timestamps, the bias tables and mask.num_targets.
// The straightforward kernels of ops/cuda/hstu_attention.h stay the reference they are tested
// against; hstu_fused_supported() says when these apply.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "ops/hstu_attention.h"

namespace genrec::cuda {

// dim_qk == dim_v in {32, 64, 128}; q, k, v, their row strides and out 16-byte aligned; at most
// 65535 sequences. Pointers may be null (then only the shape is checked).
bool hstu_fused_supported(const cpu::HstuAttentionShape& shape, int64_t batch_size,
                          const void* q = nullptr, const void* k = nullptr,
                          const void* v = nullptr);

// Training forward: out [T, H * dim] for q, k, v [T, ld] jagged by offsets, num_tokens == T ==
// offsets[batch_size] (on the host: the tile copies are bounded by it). max_len bounds the
// longest sequence (it sizes the grid; longer sequences are still computed, more slowly).
template <typename T>
void hstu_attention_fused_forward(T* out, const T* q, const T* k, const T* v,
                                  const int64_t* offsets, int64_t batch_size, int64_t num_tokens,
                                  const cpu::HstuAttentionShape& shape,
                                  const cpu::HstuRelativeBias& bias, const cpu::HstuMask& mask,
                                  int64_t max_len, cudaStream_t stream);

// Inference with a KV cache: sequence b has kv_offsets[b+1] - kv_offsets[b] tokens in k and v
// (the cached history followed by the new tokens) and its last q_offsets[b+1] - q_offsets[b]
// tokens are the new queries in q; out [Tq, H * dim] holds their outputs (q_tokens == Tq ==
// q_offsets[batch_size], kv_tokens == kv_offsets[batch_size], on the host). The mask and the
// timestamps (indexed by kv token) are those of the whole sequence, so with num_targets = the
// number of new tokens, candidates see the history and themselves only. max_new bounds the new
// tokens per sequence (more is an error) and max_len the kv tokens: it sizes the split of the
// history over blocks (0: no split; a longer sequence is still computed, in larger shares).
template <typename T>
void hstu_attention_cached_forward(T* out, const T* q, const int64_t* q_offsets, const T* k,
                                   const T* v, const int64_t* kv_offsets, int64_t batch_size,
                                   int64_t q_tokens, int64_t kv_tokens,
                                   const cpu::HstuAttentionShape& shape,
                                   const cpu::HstuRelativeBias& bias, const cpu::HstuMask& mask,
                                   int64_t max_new, int64_t max_len, cudaStream_t stream);

// d_q, d_k, d_v written with the strides of q, k, v; the fp32 bias gradients accumulate (+=)
// and are skipped when null. num_tokens == offsets[batch_size] (on the host: it sizes the fp32
// buffer dQ is summed in). Instantiated for bf16 (training).
template <typename T>
void hstu_attention_fused_backward(T* d_q, T* d_k, T* d_v, float* d_position_bias,
                                   float* d_time_bias, const T* d_out, const T* q, const T* k,
                                   const T* v, const int64_t* offsets, int64_t batch_size,
                                   int64_t num_tokens, const cpu::HstuAttentionShape& shape,
                                   const cpu::HstuRelativeBias& bias, const cpu::HstuMask& mask,
                                   int64_t max_len, cudaStream_t stream);

}  // namespace genrec::cuda
